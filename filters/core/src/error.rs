//! The one OpenAI-shaped error reply every filter sends: `{"error":{"message",...}}`
//! with the status the official clients map to the right exception class.

use serde::Serialize;

/// An error answered to the client by a filter instead of the model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400 BadRequestError, 404 NotFoundError, 413, 415, 429 RateLimitError, 503).
    pub status: u16,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// OpenAI's `code`, e.g. `model_not_found`.
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// Seconds for `Retry-After`, on 429 and 503.
    pub retry_after_s: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message).with_param("model")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "invalid_request_error",
            "unsupported_media_type",
            format!("Unsupported content type `{content_type}`; send application/json."),
        )
    }

    pub fn rate_limited(message: impl Into<String>, retry_after_s: u32) -> Self {
        Self::new(429, "rate_limit_error", "overloaded", message).with_retry_after(retry_after_s)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_s: u32) -> Self {
        Self::new(503, "server_error", code, message).with_retry_after(retry_after_s)
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// The JSON body, `{"error":{"message":..,"type":..,"param":..,"code":..}}`.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| b"{\"error\":{\"message\":\"error\"}}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped_and_escaped() {
        let e = ApiError::model_not_found("gpt-\"x\"\n");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-\"x\"\n"));
        assert_eq!(e.status, 404);
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let e = ApiError::rate_limited("busy", 2);
        assert_eq!((e.status, e.retry_after_s), (429, Some(2)));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"]["param"].is_null());
    }
}
