//! Retry policy: exponential backoff with jitter, `Retry-After` honoured, and the split
//! between failures worth retrying and failures that never get better.

use std::time::Duration;

use crate::status::METRICS;

/// A failed attempt at some remote operation.
#[derive(Debug)]
pub enum Failure {
    /// Connection errors, timeouts, stalls, 429, 5xx, integrity mismatches.
    Retryable {
        msg: String,
        retry_after: Option<Duration>,
    },
    /// 4xx other than 429, unsafe names, local I/O errors.
    Fatal(String),
    /// The server answered a ranged request with the whole body.
    RangeUnsupported,
}

impl Failure {
    pub fn retryable(msg: impl Into<String>) -> Self {
        Self::Retryable {
            msg: msg.into(),
            retry_after: None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Retryable { msg, .. } | Self::Fatal(msg) => msg.clone(),
            Self::RangeUnsupported => "server ignores Range requests".into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub max_retries: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1-based): `base * 2^(attempt-1)` capped, then a
    /// random point in its upper half so many clients do not retry in lockstep. A server's
    /// `Retry-After` wins when longer (capped at 5 minutes so a bad header cannot park us).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter = half.mul_f64(fastrand::f64());
        let backoff = half + jitter;
        match retry_after {
            Some(ra) => ra.min(Duration::from_secs(300)).max(backoff.min(ra)),
            None => backoff,
        }
    }

    /// Runs `op` until it succeeds, fails fatally, or retries run out.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(f) => {
                    attempt += 1;
                    self.pause(attempt, f, what).await?;
                }
            }
        }
    }

    /// Sleeps before retry number `attempt` when `failure` is retryable and the budget
    /// allows; otherwise hands the failure back.
    pub async fn pause(&self, attempt: u32, failure: Failure, what: &str) -> Result<(), Failure> {
        match failure {
            Failure::Retryable { msg, retry_after } if attempt <= self.max_retries => {
                let d = self.delay(attempt, retry_after);
                METRICS.retries.inc();
                crate::warn!(
                    "{what}: {msg}; retry {attempt}/{} in {:.1}s",
                    self.max_retries,
                    d.as_secs_f64()
                );
                tokio::time::sleep(d).await;
                Ok(())
            }
            Failure::Retryable { msg, .. } => Err(Failure::Fatal(format!(
                "{what}: {msg} (gave up after {} retries)",
                self.max_retries
            ))),
            other => Err(other),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies a response by its status and `Retry-After`; `None` when it is a success.
/// `auth_hint` says what to check when the source answers 401 or 403.
pub fn classify_response(resp: &reqwest::Response, what: &str, auth_hint: &str) -> Option<Failure> {
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    classify_status(resp.status().as_u16(), retry_after, what, auth_hint)
}

/// Classifies an HTTP status; `None` when it is a success.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    what: &str,
    auth_hint: &str,
) -> Option<Failure> {
    match status {
        200..=299 => None,
        429 | 500..=599 | 408 => Some(Failure::Retryable {
            msg: format!("{what}: HTTP {status}"),
            retry_after: retry_after.and_then(parse_retry_after),
        }),
        401 | 403 => Some(Failure::Fatal(format!(
            "{what}: HTTP {status} ({auth_hint})"
        ))),
        _ => Some(Failure::Fatal(format!("{what}: HTTP {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_what_to_check() {
        let Some(Failure::Fatal(msg)) = classify_status(403, None, "GET x", "check the key") else {
            panic!("403 is fatal");
        };
        assert_eq!(msg, "GET x: HTTP 403 (check the key)");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_retries: 10,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d4 = p.delay(4, None);
            assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
            assert!(p.delay(30, None) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        let p = RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
    }

    #[test]
    fn statuses_classified() {
        assert!(classify_status(200, None, "x", "-").is_none());
        assert!(matches!(
            classify_status(503, None, "x", "-"),
            Some(Failure::Retryable { .. })
        ));
        assert!(matches!(
            classify_status(429, Some("1"), "x", "-"),
            Some(Failure::Retryable {
                retry_after: Some(_),
                ..
            })
        ));
        assert!(matches!(
            classify_status(404, None, "x", "-"),
            Some(Failure::Fatal(_))
        ));
    }
}
