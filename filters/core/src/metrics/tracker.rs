//! One request between the proxy callbacks: the requested model from the request body, and
//! status, token usage and token timings from the response.

use crate::json_scan::ModelScanner;
use crate::sse::SseParser;
use crate::usage::{Usage, UsageScanner};

/// How the response body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Ignore,
    Json,
    Sse,
}

/// Per-request state between the proxy callbacks: fixed-size, no heap allocation.
#[derive(Clone, Debug)]
pub struct RequestTracker {
    start_ns: u64,
    request: ModelScanner,
    /// The request body stopped being scannable (not JSON, or `model` already read).
    request_done: bool,
    response: UsageScanner,
    sse: SseParser,
    body: BodyKind,
    status: u16,
    first_token_ns: Option<u64>,
    last_token_ns: u64,
    token_events: u64,
    sse_usage: Option<Usage>,
}

impl RequestTracker {
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            request: ModelScanner::new(),
            request_done: false,
            response: UsageScanner::new(),
            sse: SseParser::new(),
            body: BodyKind::Ignore,
            status: 0,
            first_token_ns: None,
            last_token_ns: 0,
            token_events: 0,
            sse_usage: None,
        }
    }

    /// True while the request body may still hold `model`.
    pub fn wants_request_body(&self) -> bool {
        !self.request_done
    }

    pub fn request_body(&mut self, chunk: &[u8]) {
        if self.request_done {
            return;
        }
        // The scanner stops right after the model string; the rest of the body is not needed.
        match self.request.feed(chunk) {
            Ok(n) if n < chunk.len() || self.request.model().is_some() => self.request_done = true,
            Ok(_) => {}
            Err(_) => self.request_done = true,
        }
    }

    /// The response started: `content_type` decides whether the body is JSON or SSE.
    pub fn response_headers(&mut self, status: u16, content_type: Option<&str>) {
        self.status = status;
        let ct = content_type.unwrap_or("").trim_start();
        let starts = |p: &str| ct.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        self.body = if starts("text/event-stream") {
            BodyKind::Sse
        } else if starts("application/json") {
            BodyKind::Json
        } else {
            BodyKind::Ignore
        };
    }

    pub fn wants_response_body(&self) -> bool {
        match self.body {
            BodyKind::Ignore => false,
            BodyKind::Json => !self.response.broken(),
            BodyKind::Sse => true,
        }
    }

    pub fn response_body(&mut self, now_ns: u64, chunk: &[u8], end_of_stream: bool) {
        match self.body {
            BodyKind::Ignore => {}
            BodyKind::Json => self.response.feed(chunk),
            BodyKind::Sse => {
                let mut p = self.sse.feed(chunk);
                if end_of_stream {
                    let tail = self.sse.finish();
                    p.token_events += tail.token_events;
                    p.usage = tail.usage.or(p.usage);
                }
                if p.token_events > 0 {
                    self.first_token_ns.get_or_insert(now_ns);
                    self.last_token_ns = now_ns;
                    self.token_events += u64::from(p.token_events);
                }
                if p.usage.is_some() {
                    self.sse_usage = p.usage;
                }
            }
        }
    }

    pub fn requested_model(&self) -> Option<&[u8]> {
        self.request.model().map(str::as_bytes)
    }

    /// Token counts reported by the server for this response, if any.
    pub fn usage(&self) -> Option<Usage> {
        match self.body {
            BodyKind::Json => self.response.usage(),
            BodyKind::Sse => self.sse_usage,
            BodyKind::Ignore => None,
        }
    }

    /// Timings at stream end: (duration, time to first token, time per output token), ms.
    /// Per-token time follows vLLM: (last token - first token) / (output tokens - 1).
    pub fn timings(&self, now_ns: u64) -> (u64, Option<u64>, Option<u64>) {
        let ms = |ns: u64| (ns.saturating_add(500_000)) / 1_000_000;
        let duration = ms(now_ns.saturating_sub(self.start_ns));
        let streamed_ok = self.body == BodyKind::Sse && (200..300).contains(&self.status);
        let Some(first) = self.first_token_ns.filter(|_| streamed_ok) else {
            return (duration, None, None);
        };
        let ttft = ms(first.saturating_sub(self.start_ns));
        let tokens = self
            .usage()
            .map_or(self.token_events, |u| u.completion_tokens);
        let tpot = (tokens > 1).then(|| {
            let span = self.last_token_ns.saturating_sub(first);
            ms(span / (tokens - 1))
        });
        (duration, Some(ttft), tpot)
    }

    pub fn status(&self) -> u16 {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_event(body: &str) -> String {
        format!("data: {body}\n\n")
    }

    #[test]
    fn tracker_streaming_timings_and_usage() {
        let ms = 1_000_000u64;
        let mut t = RequestTracker::new(0);
        let req = br#"{"model":"llama","stream":true,"messages":[]}"#;
        t.request_body(&req[..5]);
        assert!(t.wants_request_body());
        t.request_body(&req[5..]);
        assert!(!t.wants_request_body());
        assert_eq!(t.requested_model(), Some(&b"llama"[..]));
        t.response_headers(200, Some("text/event-stream; charset=utf-8"));
        assert!(t.wants_response_body());
        let token = sse_event(r#"{"choices":[{"delta":{"content":"x"}}]}"#);
        t.response_body(50 * ms, token.as_bytes(), false);
        for i in 1..5u64 {
            t.response_body((50 + 10 * i) * ms, token.as_bytes(), false);
        }
        let usage =
            sse_event(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5}}"#);
        t.response_body(91 * ms, usage.as_bytes(), false);
        t.response_body(91 * ms, b"data: [DONE]\n\n", true);
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 5
            })
        );
        assert_eq!(t.timings(92 * ms), (92, Some(50), Some(10)));
    }

    #[test]
    fn tracker_json_response_and_errors() {
        let mut t = RequestTracker::new(0);
        t.response_headers(200, Some("application/json"));
        t.response_body(1, br#"{"choices":[{}],"usage":{"prompt_tokens":3,"#, false);
        t.response_body(2, br#""completion_tokens":2}}"#, true);
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
        assert_eq!(t.timings(3_000_000), (3, None, None));

        let mut t = RequestTracker::new(0);
        t.response_headers(429, Some("application/json"));
        t.response_body(1, br#"{"error":{"message":"busy"}}"#, true);
        assert_eq!(t.usage(), None);
        let mut t = RequestTracker::new(0);
        t.response_headers(200, Some("text/plain"));
        assert!(!t.wants_response_body());
    }
}
