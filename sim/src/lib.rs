//! modelgate-sim: a simulated vLLM-compatible model server (see docs/sim.md).
//!
//! The binary is a thin wrapper around [`serve`], which tests also run in-process.

pub mod api;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod prefix;
pub mod request;
pub mod text;

use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use config::{MetricsFlavor, SimConfig};
pub use engine::Engine;

/// Checks what clap cannot: names and header values that would be unusable.
pub fn validate(config: &SimConfig) -> Result<(), String> {
    if config.served_model_names.is_empty()
        || config
            .served_model_names
            .iter()
            .any(|n| n.trim().is_empty())
    {
        return Err("--served-model-name: names must not be empty".into());
    }
    if axum::http::HeaderValue::from_str(&config.pod_name).is_err() {
        return Err("--pod-name: must be a valid HTTP header value".into());
    }
    Ok(())
}

/// Serves on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, config: SimConfig) -> std::io::Result<()> {
    let engine = Engine::new(config);
    // Without TCP_NODELAY, Nagle's algorithm holds back small SSE frames (one per token)
    // for up to a delayed-ACK period, which distorts inter-token latency.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, api::router(Arc::clone(&engine))).await
}
