//! The simulated engine: a FIFO admission queue in front of `--max-num-seqs` slots and a
//! KV cache of `--kv-cache-tokens`, a prefix cache that shortens prefills, token timing,
//! and the counters `/metrics` renders.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::sleep_until;

use crate::config::SimConfig;
use crate::prefix::{PrefixCache, BLOCK_TOKENS};

/// Bucket bounds (seconds) of vLLM's `time_to_first_token_seconds`.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Bucket bounds (seconds) of vLLM's request-latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A Prometheus histogram with fixed bounds, updated lock-free.
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; one more than `bounds` for +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf, i.e. the total count) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, sum)
    }
}

/// Why a finished request stopped (vLLM's `finished_reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end: the request set no limit and got `--max-tokens` tokens.
    Stop,
    /// The request's own max_tokens was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Engine state shared by every request and by `/metrics`.
pub struct Engine {
    pub config: SimConfig,
    seq_slots: Arc<Semaphore>,
    kv_slots: Arc<Semaphore>,
    started_at: Instant,
    healthy: AtomicBool,
    /// Timing, changeable at run time through `POST /sim/config`.
    ttft_us: AtomicU64,
    itl_us: AtomicU64,
    itl_per_running_us: AtomicU64,
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    /// Tokens (prompt + generated so far) held by running requests.
    pub kv_tokens: AtomicU64,
    /// Tokens reserved by running requests (prompt + whole completion).
    pub reserved_tokens: AtomicU64,
    /// Running requests that have not produced their first token yet.
    pub prefilling: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found (vLLM's counters).
    pub prefix_queries_total: AtomicU64,
    pub prefix_hits_total: AtomicU64,
    prefix_cache: Mutex<PrefixCache>,
    prefill_us_per_token: u64,
    pub generation_tokens_total: AtomicU64,
    pub success_stop: AtomicU64,
    pub success_length: AtomicU64,
    /// Requests that arrived at an inference endpoint and passed validation.
    pub requests_total: AtomicU64,
    pub ttft: Histogram,
    pub e2e_latency: Histogram,
    pub queue_time: Histogram,
}

impl Engine {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let seqs = usize::try_from(config.max_num_seqs).unwrap_or(1).max(1);
        let kv = usize::try_from(config.kv_cache_tokens)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        let ms_to_us = |ms: f64| (ms.max(0.0) * 1000.0).round() as u64;
        // The prefix cache has the KV cache's size (vLLM keeps it in the free KV blocks).
        let cache_blocks =
            usize::try_from(config.kv_cache_tokens / BLOCK_TOKENS).unwrap_or(usize::MAX);
        let prefill_us_per_token = ms_to_us(config.prefill_ms_per_token);
        Arc::new(Self {
            ttft_us: AtomicU64::new(config.ttft_ms.saturating_mul(1000)),
            itl_us: AtomicU64::new(config.itl_ms.saturating_mul(1000)),
            itl_per_running_us: AtomicU64::new(ms_to_us(config.itl_ms_per_running)),
            config,
            seq_slots: Arc::new(Semaphore::new(seqs)),
            kv_slots: Arc::new(Semaphore::new(kv)),
            started_at: Instant::now(),
            healthy: AtomicBool::new(true),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_tokens: AtomicU64::new(0),
            reserved_tokens: AtomicU64::new(0),
            prefilling: AtomicU64::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            prefix_queries_total: AtomicU64::new(0),
            prefix_hits_total: AtomicU64::new(0),
            prefix_cache: Mutex::new(PrefixCache::new(cache_blocks)),
            prefill_us_per_token,
            generation_tokens_total: AtomicU64::new(0),
            success_stop: AtomicU64::new(0),
            success_length: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            e2e_latency: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
        })
    }

    /// True once `--startup-delay-ms` has passed.
    pub fn started(&self) -> bool {
        self.started_at.elapsed() >= Duration::from_millis(self.config.startup_delay_ms)
    }

    /// Seconds until started (0 when started), for Retry-After.
    pub fn seconds_to_start(&self) -> u64 {
        let delay = Duration::from_millis(self.config.startup_delay_ms);
        delay.saturating_sub(self.started_at.elapsed()).as_secs() + 1
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Current (ttft, itl, itl per other running request).
    pub fn timing(&self) -> (Duration, Duration, Duration) {
        (
            Duration::from_micros(self.ttft_us.load(Ordering::Relaxed)),
            Duration::from_micros(self.itl_us.load(Ordering::Relaxed)),
            Duration::from_micros(self.itl_per_running_us.load(Ordering::Relaxed)),
        )
    }

    /// Changes the timing of tokens not yet due (None keeps a value).
    pub fn set_timing(
        &self,
        ttft: Option<Duration>,
        itl: Option<Duration>,
        per_running: Option<Duration>,
    ) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(d) = ttft {
            self.ttft_us.store(us(d), Ordering::Relaxed);
        }
        if let Some(d) = itl {
            self.itl_us.store(us(d), Ordering::Relaxed);
        }
        if let Some(d) = per_running {
            self.itl_per_running_us.store(us(d), Ordering::Relaxed);
        }
    }

    /// KV-cache use in 0..=1.
    pub fn kv_usage(&self) -> f64 {
        let used = self.kv_tokens.load(Ordering::Relaxed) as f64;
        (used / self.config.kv_cache_tokens.max(1) as f64).clamp(0.0, 1.0)
    }

    /// Looks the prompt's blocks up in the prefix cache (and caches them) and returns the
    /// prefill time: --ttft-ms plus --prefill-ms-per-token for each uncached token. At least
    /// one token is always computed, as in vLLM.
    fn prefill(&self, prompt_tokens: u64, blocks: &[u64]) -> Duration {
        let hit_blocks = match self.prefix_cache.lock() {
            Ok(mut cache) => cache.lookup_and_insert(blocks),
            Err(_) => 0,
        };
        let cached = (hit_blocks as u64)
            .saturating_mul(BLOCK_TOKENS)
            .min(prompt_tokens.saturating_sub(1));
        self.prefix_queries_total
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.prefix_hits_total.fetch_add(cached, Ordering::Relaxed);
        let uncached = prompt_tokens - cached;
        let extra = Duration::from_micros(self.prefill_us_per_token.saturating_mul(uncached));
        self.timing().0.saturating_add(extra)
    }

    /// Waits in the FIFO queue for a sequence slot and KV room for the whole request
    /// (prompt + completion, reserved up front so a running request is never pre-empted),
    /// then returns the running sequence. Dropping the future leaves the queue.
    /// `blocks` are the prompt's block hashes (see [`crate::prefix`]).
    pub async fn schedule(
        self: &Arc<Self>,
        prompt_tokens: u64,
        completion_tokens: u64,
        blocks: &[u64],
        arrived: Instant,
    ) -> Option<RunningSeq> {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let waiting = WaitingGuard::new(self);
        // The slot is taken first: the head of the queue holds it while it waits for KV room,
        // so later requests cannot overtake it (vLLM's FCFS scheduler behaves the same way).
        let seq = self.seq_slots.clone().acquire_owned().await.ok()?;
        let reserve = prompt_tokens
            .saturating_add(completion_tokens)
            .clamp(1, self.config.kv_cache_tokens);
        let kv = self
            .kv_slots
            .clone()
            .acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
            .await
            .ok()?;
        drop(waiting);
        let scheduled = Instant::now();
        self.queue_time.observe(scheduled - arrived);
        self.running.fetch_add(1, Ordering::Relaxed);
        self.prefilling.fetch_add(1, Ordering::Relaxed);
        self.reserved_tokens.fetch_add(reserve, Ordering::Relaxed);
        self.kv_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        self.prompt_tokens_total
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        let prefill = self.prefill(prompt_tokens, blocks);
        Some(RunningSeq {
            engine: Arc::clone(self),
            _seq: seq,
            _kv: kv,
            held_tokens: prompt_tokens,
            arrived,
            queued: scheduled - arrived,
            first_token: None,
            finished: false,
            in_prefill: true,
            reserved: reserve,
            prompt_tokens,
            next_due: scheduled.checked_add(prefill).unwrap_or(scheduled),
            generated: 0,
            target: completion_tokens,
        })
    }
}

/// Sleeps until `due`, skipping the timer when it has passed: a timer entry always waits for
/// the next tick of tokio's 1 ms wheel, which would cap zero-latency runs at ~1000 tokens/s.
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        sleep_until(due.into()).await;
    }
}

struct WaitingGuard<'a>(&'a Engine);

impl<'a> WaitingGuard<'a> {
    fn new(engine: &'a Engine) -> Self {
        engine.waiting.fetch_add(1, Ordering::Relaxed);
        Self(engine)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request holding a sequence slot; releases its slot and KV tokens when dropped
/// (also when the client goes away mid-stream).
pub struct RunningSeq {
    engine: Arc<Engine>,
    _seq: OwnedSemaphorePermit,
    _kv: OwnedSemaphorePermit,
    held_tokens: u64,
    arrived: Instant,
    queued: Duration,
    first_token: Option<Duration>,
    finished: bool,
    in_prefill: bool,
    reserved: u64,
    prompt_tokens: u64,
    /// When the next token is due; advancing a deadline (not sleeping a delay) avoids drift.
    next_due: Instant,
    generated: u64,
    target: u64,
}

impl RunningSeq {
    /// Waits for the next output token and returns its index, or None when all are out.
    /// The first is due --ttft-ms after scheduling, each further one --itl-ms (plus
    /// --itl-ms-per-running for each other running request) after the previous one.
    pub async fn next_token(&mut self) -> Option<u64> {
        if self.generated >= self.target {
            return None;
        }
        wait_until(self.next_due).await;
        let index = self.generated;
        if index == 0 {
            self.first_token_out();
        }
        let (_, itl, per_running) = self.engine.timing();
        let others = self
            .engine
            .running
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        let others = u32::try_from(others).unwrap_or(u32::MAX);
        let step = itl.saturating_add(per_running.saturating_mul(others));
        self.next_due = self.next_due.checked_add(step).unwrap_or(self.next_due);
        self.generated += 1;
        self.held_tokens += 1;
        self.engine.kv_tokens.fetch_add(1, Ordering::Relaxed);
        self.engine
            .generation_tokens_total
            .fetch_add(1, Ordering::Relaxed);
        Some(index)
    }

    /// Waits out the prefill of a request that generates nothing (embeddings) and records
    /// it as finished.
    pub async fn prefill_only(&mut self) {
        wait_until(self.next_due).await;
        self.first_token_out();
        self.finish(FinishReason::Stop);
    }

    /// Records a successful finish (call after the last token was sent).
    pub fn finish(&mut self, reason: FinishReason) {
        self.finished = true;
        self.log(reason.as_str());
        let counter = match reason {
            FinishReason::Stop => &self.engine.success_stop,
            FinishReason::Length => &self.engine.success_length,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.engine.e2e_latency.observe(self.arrived.elapsed());
    }
}

impl RunningSeq {
    fn first_token_out(&mut self) {
        let ttft = self.arrived.elapsed();
        self.first_token = Some(ttft);
        self.engine.ttft.observe(ttft);
        if std::mem::replace(&mut self.in_prefill, false) {
            self.engine.prefilling.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn log(&self, outcome: &str) {
        if !self.engine.config.log_requests {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "modelgate-sim: request {outcome} prompt_tokens={} completion_tokens={}/{} \
             queue_ms={:.1} ttft_ms={} total_ms={:.1} running={} waiting={}",
            self.prompt_tokens,
            self.generated,
            self.target,
            ms(self.queued),
            self.first_token
                .map_or_else(|| "-".to_owned(), |d| format!("{:.1}", ms(d))),
            ms(self.arrived.elapsed()),
            self.engine.running.load(Ordering::Relaxed),
            self.engine.waiting.load(Ordering::Relaxed),
        );
    }
}

impl Drop for RunningSeq {
    fn drop(&mut self) {
        if !self.finished {
            self.log("aborted");
        }
        if self.in_prefill {
            self.engine.prefilling.fetch_sub(1, Ordering::Relaxed);
        }
        self.engine
            .reserved_tokens
            .fetch_sub(self.reserved, Ordering::Relaxed);
        self.engine
            .kv_tokens
            .fetch_sub(self.held_tokens, Ordering::Relaxed);
        self.engine.running.fetch_sub(1, Ordering::Relaxed);
    }
}
