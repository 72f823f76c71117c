//! HTTP routes: OpenAI-compatible inference, health, models, metrics and run-time control.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::check_delay_ms;
use crate::engine::{Engine, RunningSeq};
use crate::metrics;
use crate::request::{
    embedding_inputs, parse_generation, parse_object, resolve_model, Endpoint, GenRequest, SimError,
};
use crate::text::{completion_text, count_tokens, embedding, token_text};

/// Request bodies above this are refused with 413 (vLLM has no fixed limit; this keeps a
/// misbehaving client from exhausting memory).
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Builds the router; every response carries `x-sim-pod`.
pub fn router(engine: Arc<Engine>) -> Router {
    let pod = HeaderValue::from_str(&engine.config.pod_name)
        .unwrap_or_else(|_| HeaderValue::from_static("sim"));
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/ping", get(health))
        .route("/version", get(version))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics_text))
        .route("/sim/health", post(set_health).get(get_health))
        .route("/sim/config", post(set_config).get(get_config))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(move |mut resp: Response| {
            let pod = pod.clone();
            async move {
                resp.headers_mut().insert("x-sim-pod", pod);
                resp
            }
        }))
        .with_state(engine)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unique-enough request id (process start time mixed with a counter).
fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{start:08x}{n:016x}")
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

async fn health(State(engine): State<Arc<Engine>>) -> StatusCode {
    if engine.started() && engine.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn version() -> Json<Value> {
    Json(json!({"version": concat!(env!("CARGO_PKG_VERSION"), "+modelgate-sim")}))
}

async fn models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let created = unix_now();
    let data: Vec<Value> = if engine.started() {
        engine
            .config
            .served_model_names
            .iter()
            .map(|name| {
                json!({
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": null,
                    "max_model_len": engine.config.max_model_len(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Json(json!({"object": "list", "data": data}))
}

async fn metrics_text(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&engine),
    )
        .into_response()
}

async fn get_health(State(engine): State<Arc<Engine>>) -> Json<Value> {
    Json(json!({"healthy": engine.healthy(), "started": engine.started()}))
}

async fn set_health(
    State(engine): State<Arc<Engine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rej) => return SimError::from_status(rej.status(), rej.body_text()).into_response(),
    };
    let healthy = match parse_object(&body) {
        Ok(obj) => match obj.get("healthy") {
            Some(Value::Bool(b)) => *b,
            _ => {
                return SimError::bad_request("`healthy` is required and must be a boolean.")
                    .into_response()
            }
        },
        Err(e) => return e.into_response(),
    };
    engine.set_healthy(healthy);
    Json(json!({"healthy": healthy})).into_response()
}

/// Body of `POST /sim/config`: timing changes, applied to tokens not yet due.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingUpdate {
    ttft_ms: Option<f64>,
    itl_ms: Option<f64>,
    itl_ms_per_running: Option<f64>,
}

fn timing_json(engine: &Engine) -> Value {
    let (ttft, itl, per_running) = engine.timing();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    json!({"ttft_ms": ms(ttft), "itl_ms": ms(itl), "itl_ms_per_running": ms(per_running)})
}

async fn get_config(State(engine): State<Arc<Engine>>) -> Json<Value> {
    Json(timing_json(&engine))
}

async fn set_config(
    State(engine): State<Arc<Engine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rej) => return SimError::from_status(rej.status(), rej.body_text()).into_response(),
    };
    let update: TimingUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return SimError::bad_request(format!("Invalid /sim/config body: {e}")).into_response()
        }
    };
    let mut durations = [None, None, None];
    for (slot, (name, value)) in durations.iter_mut().zip([
        ("ttft_ms", update.ttft_ms),
        ("itl_ms", update.itl_ms),
        ("itl_ms_per_running", update.itl_ms_per_running),
    ]) {
        if let Some(ms) = value {
            if let Err(e) = check_delay_ms(ms) {
                return SimError::bad_request(format!("`{name}` {e}.")).into_response();
            }
            *slot = Some(std::time::Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let [ttft, itl, per_running] = durations;
    engine.set_timing(ttft, itl, per_running);
    Json(timing_json(&engine)).into_response()
}

async fn chat(State(engine): State<Arc<Engine>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(engine, body, Endpoint::Chat).await
}

async fn completions(
    State(engine): State<Arc<Engine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(engine, body, Endpoint::Completion).await
}

async fn generate(
    engine: Arc<Engine>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let arrived = Instant::now();
    if !engine.started() {
        return SimError::starting(engine.seconds_to_start()).into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(rej) => return SimError::from_status(rej.status(), rej.body_text()).into_response(),
    };
    let req = match parse_generation(&body, endpoint, &engine.config) {
        Ok(r) => r,
        Err(e) => return refuse(&engine, e),
    };
    if req.stream {
        stream_response(engine, req, arrived)
    } else {
        json_response(engine, req, arrived).await
    }
}

/// Answers a refused inference request (and logs it with --log-requests).
fn refuse(engine: &Engine, e: SimError) -> Response {
    if engine.config.log_requests {
        eprintln!(
            "modelgate-sim: request refused {}: {}",
            e.status.as_u16(),
            e.message
        );
    }
    e.into_response()
}

fn usage(req: &GenRequest) -> Value {
    json!({
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": req.completion_tokens,
        "total_tokens": req.prompt_tokens + req.completion_tokens,
    })
}

async fn json_response(engine: Arc<Engine>, req: GenRequest, arrived: Instant) -> Response {
    let Some(mut seq) = engine
        .schedule(
            req.prompt_tokens,
            req.completion_tokens,
            &req.blocks,
            arrived,
        )
        .await
    else {
        return SimError::from_status(StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
            .into_response();
    };
    while seq.next_token().await.is_some() {}
    seq.finish(req.finish);
    drop(seq);
    let text = completion_text(req.seed, req.completion_tokens);
    let finish = req.finish.as_str();
    let body = match req.endpoint {
        Endpoint::Chat => json!({
            "id": request_id("chatcmpl"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": req.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": null,
                "finish_reason": finish,
                "stop_reason": null,
            }],
            "usage": usage(&req),
        }),
        Endpoint::Completion => json!({
            "id": request_id("cmpl"),
            "object": "text_completion",
            "created": unix_now(),
            "model": req.model,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
                "stop_reason": null,
            }],
            "usage": usage(&req),
        }),
    };
    Json(body).into_response()
}

/// Where a streamed response is.
enum Phase {
    Queued,
    Tokens,
    Usage,
    Done,
    End,
}

struct StreamState {
    engine: Arc<Engine>,
    req: GenRequest,
    arrived: Instant,
    seq: Option<RunningSeq>,
    phase: Phase,
    /// `data: {"id":..,"object":..,"created":..,"model":..,` shared by every chunk.
    prefix: String,
}

impl StreamState {
    fn chunk(&self, rest: &str) -> String {
        format!("{}{rest}}}\n\n", self.prefix)
    }

    fn token_chunk(&self, index: u64) -> String {
        let text = Value::String(token_text(self.req.seed, index)).to_string();
        let last = index + 1 >= self.req.completion_tokens;
        let finish = if last {
            format!("\"{}\"", self.req.finish.as_str())
        } else {
            "null".to_owned()
        };
        match self.req.endpoint {
            Endpoint::Chat => self.chunk(&format!(
                "\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text}}},\"logprobs\":null,\"finish_reason\":{finish}}}]"
            )),
            Endpoint::Completion => self.chunk(&format!(
                "\"choices\":[{{\"index\":0,\"text\":{text},\"logprobs\":null,\"finish_reason\":{finish},\"stop_reason\":null}}]"
            )),
        }
    }

    /// The next SSE frame(s), or None at the end of the stream.
    async fn next_frame(&mut self) -> Option<String> {
        loop {
            match self.phase {
                Phase::Queued => {
                    let seq = self
                        .engine
                        .schedule(
                            self.req.prompt_tokens,
                            self.req.completion_tokens,
                            &self.req.blocks,
                            self.arrived,
                        )
                        .await;
                    self.seq = seq;
                    self.phase = if self.seq.is_some() {
                        Phase::Tokens
                    } else {
                        Phase::End
                    };
                }
                Phase::Tokens => {
                    // Taken out so the chunk helpers can borrow self; put back below.
                    let mut seq = self.seq.take()?;
                    let Some(index) = seq.next_token().await else {
                        self.phase = Phase::Usage;
                        continue;
                    };
                    let mut frame = String::new();
                    if index == 0 && self.req.endpoint == Endpoint::Chat {
                        // vLLM announces the role in a first, content-free chunk.
                        frame.push_str(&self.chunk(
                            "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]",
                        ));
                    }
                    frame.push_str(&self.token_chunk(index));
                    if index + 1 >= self.req.completion_tokens {
                        seq.finish(self.req.finish);
                        // Dropping seq frees the slot now, not when the client disconnects.
                        self.phase = Phase::Usage;
                    } else {
                        self.seq = Some(seq);
                    }
                    return Some(frame);
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if self.req.include_usage {
                        return Some(
                            self.chunk(&format!("\"choices\":[],\"usage\":{}", usage(&self.req))),
                        );
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some("data: [DONE]\n\n".to_owned());
                }
                Phase::End => return None,
            }
        }
    }
}

fn stream_response(engine: Arc<Engine>, req: GenRequest, arrived: Instant) -> Response {
    let (id, object) = match req.endpoint {
        Endpoint::Chat => (request_id("chatcmpl"), "chat.completion.chunk"),
        Endpoint::Completion => (request_id("cmpl"), "text_completion"),
    };
    let prefix = format!(
        "data: {{\"id\":\"{id}\",\"object\":\"{object}\",\"created\":{},\"model\":{},",
        unix_now(),
        Value::String(req.model.clone())
    );
    let state = StreamState {
        engine,
        req,
        arrived,
        seq: None,
        phase: Phase::Queued,
        prefix,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let frame = st.next_frame().await?;
        Some((Ok::<_, Infallible>(Bytes::from(frame)), st))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn embeddings(
    State(engine): State<Arc<Engine>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    if !engine.started() {
        return SimError::starting(engine.seconds_to_start()).into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(rej) => return SimError::from_status(rej.status(), rej.body_text()).into_response(),
    };
    let parsed = parse_object(&body).and_then(|obj| {
        let model = resolve_model(&obj, &engine.config)?;
        let inputs = embedding_inputs(&obj)?;
        Ok((model, inputs))
    });
    let (model, inputs) = match parsed {
        Ok(p) => p,
        Err(e) => return refuse(&engine, e),
    };
    let prompt_tokens: u64 = inputs.iter().map(|s| count_tokens(s).max(1)).sum();
    // An embedding is a prefill only: it queues like any request and takes --ttft-ms.
    let Some(mut seq) = engine.schedule(prompt_tokens, 0, &[], arrived).await else {
        return SimError::from_status(StatusCode::SERVICE_UNAVAILABLE, "engine stopped")
            .into_response();
    };
    seq.prefill_only().await;
    drop(seq);
    let dim = engine.config.embedding_dim;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding(text, dim)}))
        .collect();
    Json(json!({
        "id": request_id("embd"),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
    }))
    .into_response()
}
