//! Snapshots shared between filters through proxy-wasm shared data. Written on a tick
//! by the VM that holds the poll lease; read by every VM on its own tick (never per
//! request). Filters share them when configured with the same `vm_id` ("modelgate").

use serde::{Deserialize, Serialize};

/// Whether the local model server may receive traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    /// No check has completed yet.
    #[default]
    Unknown,
    /// Health, model list or loader says no.
    NotReady,
    Ready,
    /// The loader is draining or swapping versions: refuse new requests.
    Draining,
}

/// The readiness gate's latest verdict, with what the metrics filter needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReadinessSnapshot {
    pub status: ReadinessStatus,
    /// Why not ready, for logs and the probe body ("health returned 503", ...).
    pub reason: String,
    /// Model the gate checks for.
    pub model: String,
    /// Wall-clock ms of the last completed check.
    pub checked_at_ms: u64,
    /// Increments with every completed check, so readers can count checks.
    pub seq: u64,
    /// Latency of the last health call, when it answered.
    pub health_latency_ms: Option<u32>,
}

/// The model server's load, as last scraped from its Prometheus endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct QueueSnapshot {
    /// Requests waiting in the server's queue.
    pub waiting: f64,
    /// Requests running on the server.
    pub running: f64,
    /// KV-cache use, 0.0..=1.0.
    pub kv_cache_usage: f64,
    /// Wall-clock ms of the last successful scrape (0: never).
    pub scraped_at_ms: u64,
    /// Increments with every scrape attempt, so readers can count attempts and failures.
    pub seq: u64,
    /// Kind of the failure when the latest attempt failed (`timeout`, `status`, `parse`...).
    pub error: Option<String>,
    /// Server kind the metrics came from (`vllm`, `sglang`, `tgi`, `triton`).
    pub server: String,
    /// `model_name` label seen in the metrics, when any.
    pub model: String,
}

/// Encodes a snapshot for shared data.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a snapshot from shared data; `None` for absent or foreign bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip() {
        let r = ReadinessSnapshot {
            status: ReadinessStatus::Draining,
            reason: "loader: draining".into(),
            seq: 3,
            ..Default::default()
        };
        assert_eq!(decode::<ReadinessSnapshot>(&encode(&r)), Some(r));
        let q = QueueSnapshot {
            waiting: 7.0,
            kv_cache_usage: 0.5,
            error: Some("timeout".into()),
            ..Default::default()
        };
        assert_eq!(decode::<QueueSnapshot>(&encode(&q)), Some(q));
        assert_eq!(decode::<QueueSnapshot>(b"\xff garbage"), None);
    }
}
