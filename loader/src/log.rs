//! Plain log lines on stderr (`<rfc3339> <LEVEL> <message>`); callers pass redacted text only.

use std::fmt::Arguments;

/// Writes one log line; the progress bar, when shown, is suspended around it.
pub fn emit(level: &str, args: Arguments<'_>) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let line = format!("{now} {level} {args}");
    crate::progress::println_above(&line);
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::emit("INFO", format_args!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::emit("WARN", format_args!($($t)*)) };
}
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::emit("ERROR", format_args!($($t)*)) };
}

/// A URL safe to log: no user info, no query string (presigned URLs carry signatures there).
pub fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) => {
            let had_query = url.query().is_some();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            let mut s = url.to_string();
            if had_query {
                s.push_str("?<redacted>");
            }
            s
        }
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_query() {
        let r = redact_url("https://user:secret@host/a/b.tar?X-Amz-Signature=abc");
        assert_eq!(r, "https://host/a/b.tar?<redacted>");
        assert!(!r.contains("secret"));
    }
}
