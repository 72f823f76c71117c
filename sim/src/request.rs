//! Validation of inference request bodies into what the engine needs, with vLLM-shaped
//! errors that name the offending field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::config::SimConfig;
use crate::engine::FinishReason;
use crate::prefix::BlockHasher;
use crate::text::{count_tokens, stable_hash};

/// An error in vLLM's shape: `{"object":"error","message","type","param","code"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl SimError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: format!("The model `{model}` does not exist."),
            retry_after_s: None,
        }
    }

    pub fn starting(retry_after_s: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: "The server is starting up; the model is not loaded yet.".into(),
            retry_after_s: Some(retry_after_s),
        }
    }

    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "RequestTooLargeError"
            } else {
                "BadRequestError"
            },
            message: message.into(),
            retry_after_s: None,
        }
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        // A struct, not json!, to keep vLLM's field order.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            object: &'static str,
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: u16,
        }
        let body = Body {
            object: "error",
            message: &self.message,
            kind: self.kind,
            param: None,
            code: self.status.as_u16(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// Which OpenAI endpoint a generation request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    pub endpoint: Endpoint,
    /// The request's `model` (echoed in the response), or the first served name if absent.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish: FinishReason,
    pub stream: bool,
    pub include_usage: bool,
    /// Hash of the prompt text, which picks the output words.
    pub seed: u64,
    /// Hashes of the prompt's full 16-token blocks, for the prefix cache.
    pub blocks: Vec<u64>,
}

/// Parses a JSON body into an object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SimError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SimError::bad_request(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(SimError::bad_request(format!("Invalid JSON body: {e}"))),
    }
}

/// Resolves `model`: absent/null means the first served name (as vLLM does); an unknown
/// name is a 404.
pub fn resolve_model(obj: &Map<String, Value>, cfg: &SimConfig) -> Result<String, SimError> {
    match obj.get("model") {
        None | Some(Value::Null) => Ok(cfg.primary_model().to_owned()),
        Some(Value::String(m)) if cfg.served_model_names.iter().any(|s| s == m) => Ok(m.clone()),
        Some(Value::String(m)) => Err(SimError::model_not_found(m)),
        Some(_) => Err(SimError::bad_request("`model` must be a string.")),
    }
}

/// Parses a chat or text completion request.
pub fn parse_generation(
    body: &[u8],
    endpoint: Endpoint,
    cfg: &SimConfig,
) -> Result<GenRequest, SimError> {
    let obj = parse_object(body)?;
    let model = resolve_model(&obj, cfg)?;
    let (prompt_tokens, seed, blocks) = match endpoint {
        Endpoint::Chat => chat_prompt(&obj)?,
        Endpoint::Completion => completion_prompt(&obj)?,
    };
    let prompt_tokens = prompt_tokens.max(1);

    // vLLM: max_completion_tokens wins over the deprecated max_tokens.
    let limit = match opt_positive_int(&obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_positive_int(&obj, "max_tokens")?,
    };
    let (completion_tokens, finish) = match limit {
        Some(n) => (n, FinishReason::Length),
        None => (cfg.max_tokens, FinishReason::Stop),
    };
    let max_len = cfg.max_model_len();
    if prompt_tokens.saturating_add(completion_tokens) > max_len {
        return Err(SimError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, you requested \
             {} tokens ({prompt_tokens} in the messages, {completion_tokens} in the completion). \
             Please reduce the length of the messages or completion.",
            prompt_tokens.saturating_add(completion_tokens)
        )));
    }

    if let Some(n) = opt_positive_int(&obj, "n")? {
        if n != 1 {
            return Err(SimError::bad_request(
                "`n` other than 1 is not supported by modelgate-sim.",
            ));
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(SimError::bad_request("`stream` must be a boolean.")),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(opts)) => {
            if !stream {
                return Err(SimError::bad_request(
                    "Stream options can only be defined when `stream=True`.",
                ));
            }
            match opts.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(SimError::bad_request(
                        "`stream_options.include_usage` must be a boolean.",
                    ))
                }
            }
        }
        Some(_) => return Err(SimError::bad_request("`stream_options` must be an object.")),
    };

    Ok(GenRequest {
        endpoint,
        model,
        prompt_tokens,
        completion_tokens,
        finish,
        stream,
        include_usage,
        seed,
        blocks,
    })
}

fn opt_positive_int(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, SimError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(SimError::bad_request(format!(
                "`{field}` must be an integer >= 1."
            ))),
        },
    }
}

fn fnv_update(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Words of every message's text, a hash of that text, and its block hashes.
fn chat_prompt(obj: &Map<String, Value>) -> Result<(u64, u64, Vec<u64>), SimError> {
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(SimError::bad_request("`messages` is required."));
        }
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(SimError::bad_request("`messages` must not be empty."));
        }
        Some(_) => return Err(SimError::bad_request("`messages` must be an array.")),
    };
    let mut tokens = 0u64;
    let mut hash = stable_hash(b"");
    let mut blocks = BlockHasher::default();
    for (i, msg) in messages.iter().enumerate() {
        let Some(msg) = msg.as_object() else {
            return Err(SimError::bad_request(format!(
                "`messages[{i}]` must be an object."
            )));
        };
        match msg.get("role") {
            Some(Value::String(role)) => blocks.boundary(role),
            _ => {
                return Err(SimError::bad_request(format!(
                    "`messages[{i}].role` is required and must be a string."
                )))
            }
        }
        match msg.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                tokens += count_tokens(s);
                hash = fnv_update(hash, s.as_bytes());
                blocks.words(s);
            }
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let text = part
                        .as_object()
                        .and_then(|p| match p.get("type") {
                            Some(Value::String(t)) if t == "text" => {
                                p.get("text").map(|t| t.as_str())
                            }
                            // Images, audio etc. are accepted and not counted.
                            Some(Value::String(_)) => Some(Some("")),
                            _ => None,
                        })
                        .flatten();
                    let Some(text) = text else {
                        return Err(SimError::bad_request(format!(
                            "`messages[{i}].content[{j}]` must be an object with a string \
                             `type` (and a string `text` for type \"text\")."
                        )));
                    };
                    tokens += count_tokens(text);
                    hash = fnv_update(hash, text.as_bytes());
                    blocks.words(text);
                }
            }
            Some(_) => {
                return Err(SimError::bad_request(format!(
                    "`messages[{i}].content` must be a string, an array of content parts or null."
                )))
            }
        }
    }
    Ok((tokens, hash, blocks.finish()))
}

/// Tokens of `prompt` (a string, or token ids), a hash of it, and its block hashes.
fn completion_prompt(obj: &Map<String, Value>) -> Result<(u64, u64, Vec<u64>), SimError> {
    const SHAPE: &str = "`prompt` must be a string, an array of token ids, or an array \
                         holding one of those (batched prompts are not supported).";
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(SimError::bad_request("`prompt` is required.")),
        Some(p) => p,
    };
    let single = match prompt {
        Value::Array(items) if items.len() == 1 && !items.iter().all(Value::is_u64) => {
            items.first().unwrap_or(prompt)
        }
        other => other,
    };
    match single {
        Value::String(s) => {
            let mut blocks = BlockHasher::default();
            blocks.words(s);
            Ok((count_tokens(s), stable_hash(s.as_bytes()), blocks.finish()))
        }
        Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
            let mut blocks = BlockHasher::default();
            let hash = ids.iter().fold(stable_hash(b""), |h, id| {
                let bytes = id.as_u64().unwrap_or(0).to_le_bytes();
                blocks.token(&bytes);
                fnv_update(h, &bytes)
            });
            Ok((ids.len() as u64, hash, blocks.finish()))
        }
        _ => Err(SimError::bad_request(SHAPE)),
    }
}

/// The strings to embed from an embeddings request's `input`, plus its prompt tokens.
pub fn embedding_inputs(obj: &Map<String, Value>) -> Result<Vec<String>, SimError> {
    const SHAPE: &str =
        "`input` must be a string, an array of strings, or token ids (an array of integers or of arrays of integers).";
    let input = match obj.get("input") {
        None | Some(Value::Null) => return Err(SimError::bad_request("`input` is required.")),
        Some(i) => i,
    };
    let ids_text = |ids: &Vec<Value>| -> Option<String> {
        if ids.is_empty() || !ids.iter().all(Value::is_u64) {
            return None;
        }
        Some(
            ids.iter()
                .map(|v| v.as_u64().unwrap_or(0).to_string())
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    match input {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if items.is_empty() => Err(SimError::bad_request(SHAPE)),
        Value::Array(items) if items.iter().all(Value::is_u64) => ids_text(items)
            .map(|t| vec![t])
            .ok_or_else(|| SimError::bad_request(SHAPE)),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Array(ids) => ids_text(ids),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| SimError::bad_request(SHAPE)),
        _ => Err(SimError::bad_request(SHAPE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig::defaults()
    }

    #[test]
    fn chat_counts_words_of_all_messages() {
        let body = br#"{"model":"sim-model","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello there world"},{"type":"image_url","image_url":{"url":"x"}}]}],
            "max_tokens":3}"#;
        let r = parse_generation(body, Endpoint::Chat, &cfg()).unwrap();
        assert_eq!(r.prompt_tokens, 5);
        assert_eq!(r.completion_tokens, 3);
        assert_eq!(r.finish, FinishReason::Length);
        assert!(!r.stream);
    }

    #[test]
    fn max_completion_tokens_wins_and_default_applies() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"max_completion_tokens":5}"#;
        let r = parse_generation(body, Endpoint::Chat, &cfg()).unwrap();
        assert_eq!(r.completion_tokens, 5);
        assert_eq!(r.model, "sim-model");
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let r = parse_generation(body, Endpoint::Chat, &cfg()).unwrap();
        assert_eq!((r.completion_tokens, r.finish), (16, FinishReason::Stop));
    }

    #[test]
    fn bad_inputs_are_400_and_unknown_model_404() {
        let c = cfg();
        for body in [
            &b"{not json"[..],
            b"[]",
            br#"{"model":"sim-model"}"#,
            br#"{"messages":"hi"}"#,
            br#"{"messages":[]}"#,
            br#"{"messages":[{"content":"x"}]}"#,
            br#"{"messages":[{"role":"user","content":5}]}"#,
            br#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"5"}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"model":7}"#,
            br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":99999999}"#,
        ] {
            let e = parse_generation(body, Endpoint::Chat, &c).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
        }
        let e = parse_generation(
            br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            Endpoint::Chat,
            &c,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "The model `nope` does not exist.");
    }

    #[test]
    fn completion_prompts() {
        let c = cfg();
        let p = |b: &[u8]| parse_generation(b, Endpoint::Completion, &c).map(|r| r.prompt_tokens);
        assert_eq!(p(br#"{"prompt":"one two three"}"#).unwrap(), 3);
        assert_eq!(p(br#"{"prompt":["one two"]}"#).unwrap(), 2);
        assert_eq!(p(br#"{"prompt":[1,2,3,4]}"#).unwrap(), 4);
        assert_eq!(p(br#"{"prompt":[[1,2]]}"#).unwrap(), 2);
        assert_eq!(p(br#"{"prompt":""}"#).unwrap(), 1);
        assert!(p(br#"{"prompt":["a","b"]}"#).is_err());
        assert!(p(br#"{"prompt":5}"#).is_err());
        assert!(p(br#"{}"#).is_err());
    }
}
