//! The command line (the contract in docs/CONTRACTS.md) and its derived limits.

use clap::{Parser, ValueEnum};

/// Upper bound of every delay flag (one hour), so deadline arithmetic cannot overflow.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// A delay in (fractional) milliseconds within 0..=MAX_DELAY_MS (NaN is refused too).
pub fn check_delay_ms(ms: f64) -> Result<f64, String> {
    if (0.0..=MAX_DELAY_MS as f64).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!("must be between 0 and {MAX_DELAY_MS}"))
    }
}

fn parse_delay_ms(text: &str) -> Result<f64, String> {
    let ms: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of milliseconds"))?;
    check_delay_ms(ms)
}

/// Whose metric names `/metrics` uses for the same engine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsFlavor {
    Vllm,
    Sglang,
    Tgi,
    Triton,
}

/// modelgate-sim: a simulated vLLM-compatible model server for demos, tests and benchmarks.
#[derive(Debug, Clone, Parser)]
#[command(name = "modelgate-sim", version, about)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the banner prints it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Model name(s) served; repeatable or comma-separated. The first labels the metrics.
    #[arg(
        long = "served-model-name",
        value_delimiter = ',',
        default_value = "sim-model"
    )]
    pub served_model_names: Vec<String>,

    /// Milliseconds before the server is healthy (/health 503, /v1/models empty, inference 503).
    #[arg(long, default_value_t = 0)]
    pub startup_delay_ms: u64,

    /// Maximum concurrently running requests; the rest wait in a FIFO queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_seqs: u32,

    /// Milliseconds from scheduling to the first output token.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub ttft_ms: u64,

    /// Extra prefill milliseconds per prompt token not found in the prefix cache (added to
    /// --ttft-ms; fractions allowed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_delay_ms)]
    pub prefill_ms_per_token: f64,

    /// Milliseconds per further output token.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub itl_ms: u64,

    /// Extra milliseconds per output token for each other running request (decode steps
    /// slow down as the batch grows; 0 keeps --itl-ms fixed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_delay_ms)]
    pub itl_ms_per_running: f64,

    /// Completion length in tokens when the request sets no max_tokens/max_completion_tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: u64,

    /// KV-cache capacity in tokens (prompt + generated tokens of running requests).
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_cache_tokens: u64,

    /// Maximum prompt + completion tokens of one request (default: --kv-cache-tokens).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_model_len: Option<u64>,

    /// Echoed in the `x-sim-pod` response header.
    #[arg(long, default_value = "sim")]
    pub pod_name: String,

    /// Metric names to render the engine state with.
    #[arg(long, value_enum, default_value_t = MetricsFlavor::Vllm)]
    pub metrics_flavor: MetricsFlavor,

    /// Log one line per finished, aborted or refused inference request to stderr.
    #[arg(long)]
    pub log_requests: bool,

    /// Length of the vectors /v1/embeddings returns.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub embedding_dim: u64,
}

impl SimConfig {
    /// The configuration with every flag at its default (for tests and embedding).
    pub fn defaults() -> Self {
        Self::parse_from(["modelgate-sim"])
    }

    /// The name metrics are labelled with.
    pub fn primary_model(&self) -> &str {
        self.served_model_names
            .first()
            .map(String::as_str)
            .unwrap_or("sim-model")
    }

    pub fn max_model_len(&self) -> u64 {
        self.max_model_len.unwrap_or(self.kv_cache_tokens)
    }
}
