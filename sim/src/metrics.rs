//! Prometheus text for `/metrics`: the engine state under vLLM's names, or (with
//! `--metrics-flavor`) under SGLang's, TGI's or Triton/TensorRT-LLM's. Each flavour is a
//! table of metric families; one renderer writes them all.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::config::MetricsFlavor;
use crate::engine::{Engine, Histogram};

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The engine state read once per scrape.
struct State<'a> {
    engine: &'a Engine,
    running: f64,
    waiting: f64,
    kv: f64,
    kv_used: f64,
    reserved: f64,
    prefilling: f64,
    prompt: f64,
    generated: f64,
    finished: f64,
    stop: f64,
    length: f64,
    requests: f64,
    kv_max: f64,
    max_seqs: f64,
}

impl<'a> State<'a> {
    fn read(engine: &'a Engine) -> Self {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let stop = n(&engine.success_stop);
        let length = n(&engine.success_length);
        Self {
            running: n(&engine.running),
            waiting: n(&engine.waiting),
            kv: engine.kv_usage(),
            kv_used: n(&engine.kv_tokens),
            reserved: n(&engine.reserved_tokens),
            prefilling: n(&engine.prefilling),
            prompt: n(&engine.prompt_tokens_total),
            generated: n(&engine.generation_tokens_total),
            finished: stop + length,
            stop,
            length,
            requests: n(&engine.requests_total),
            kv_max: engine.config.kv_cache_tokens as f64,
            max_seqs: f64::from(engine.config.max_num_seqs),
            engine,
        }
    }

    /// Blocks of 16 tokens, TensorRT-LLM's usual page size: (max, used).
    fn blocks(&self) -> (f64, f64) {
        let max = (self.kv_max / BLOCK).floor().max(1.0);
        (max, (self.kv_used / BLOCK).ceil().min(max))
    }
}

const BLOCK: f64 = 16.0;

type Read = fn(&State) -> f64;

#[derive(Clone, Copy)]
enum Hist {
    Ttft,
    E2e,
    Queue,
}

enum Samples {
    One(Read),
    /// One sample per value of the label.
    By(&'static str, &'static [(&'static str, Read)]),
    Histogram(Hist),
}

/// One metric family as a server of the flavour exposes it.
struct Family {
    name: &'static str,
    kind: &'static str,
    /// Empty: no `# HELP` line (TGI writes none).
    help: &'static str,
    samples: Samples,
}

const fn gauge(name: &'static str, help: &'static str, read: Read) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
        samples: Samples::One(read),
    }
}

const fn counter(name: &'static str, help: &'static str, read: Read) -> Family {
    Family {
        name,
        kind: "counter",
        help,
        samples: Samples::One(read),
    }
}

const fn histogram(name: &'static str, help: &'static str, h: Hist) -> Family {
    Family {
        name,
        kind: "histogram",
        help,
        samples: Samples::Histogram(h),
    }
}

/// A server flavour: the labels on every sample (`{model}` is the served model's name) and
/// its families, in the order the server writes them.
struct Flavor {
    labels: &'static [(&'static str, &'static str)],
    families: &'static [Family],
}

const VLLM: Flavor = Flavor {
    labels: &[("model_name", "{model}")],
    families: &[
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            |s| s.running,
        ),
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            |s| s.waiting,
        ),
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            |s| s.kv,
        ),
        gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            |s| s.kv,
        ),
        counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
            |_| 0.0,
        ),
        counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            |s| s.prompt,
        ),
        counter(
            "vllm:prefix_cache_queries_total",
            "Prefix-cache queries, in terms of number of queried tokens.",
            |s| s.engine.prefix_queries_total.load(Ordering::Relaxed) as f64,
        ),
        counter(
            "vllm:prefix_cache_hits_total",
            "Prefix-cache hits, in terms of number of cached tokens.",
            |s| s.engine.prefix_hits_total.load(Ordering::Relaxed) as f64,
        ),
        counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            |s| s.generated,
        ),
        Family {
            name: "vllm:request_success_total",
            kind: "counter",
            help: "Count of successfully processed requests.",
            samples: Samples::By(
                "finished_reason",
                &[("stop", |s| s.stop), ("length", |s| s.length)],
            ),
        },
        histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            Hist::Ttft,
        ),
        histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            Hist::E2e,
        ),
        histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            Hist::Queue,
        ),
    ],
};

const SGLANG: Flavor = Flavor {
    labels: &[("model_name", "{model}")],
    families: &[
        gauge(
            "sglang:num_running_reqs",
            "The number of running requests.",
            |s| s.running,
        ),
        gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            |s| s.waiting,
        ),
        gauge(
            "sglang:num_used_tokens",
            "The number of used tokens.",
            |s| s.kv_used,
        ),
        gauge("sglang:token_usage", "The token usage.", |s| s.kv),
        gauge(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens.",
            |s| s.kv_max,
        ),
        counter(
            "sglang:prompt_tokens_total",
            "Number of prefill tokens processed.",
            |s| s.prompt,
        ),
        counter(
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            |s| s.generated,
        ),
        counter(
            "sglang:num_requests_total",
            "Number of requests processed.",
            |s| s.finished,
        ),
        histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            Hist::Ttft,
        ),
        histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            Hist::E2e,
        ),
    ],
};

/// TGI's exporter writes TYPE lines only and no labels.
const TGI: Flavor = Flavor {
    labels: &[],
    families: &[
        gauge("tgi_queue_size", "", |s| s.waiting),
        gauge("tgi_batch_current_size", "", |s| s.running),
        // The token budget the current batch has reserved (prompts + max new tokens).
        gauge("tgi_batch_current_max_tokens", "", |s| s.reserved),
        counter("tgi_request_count", "", |s| s.requests),
        counter("tgi_request_success", "", |s| s.finished),
        counter("tgi_request_input_count", "", |s| s.prompt),
        counter("tgi_request_generated_tokens_count", "", |s| s.generated),
    ],
};

const TRITON: Flavor = Flavor {
    labels: &[("model", "{model}"), ("version", "1")],
    families: &[
        gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            |s| s.waiting,
        ),
        counter(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
            |s| s.finished,
        ),
        counter(
            "nv_inference_count",
            "Number of inferences performed (does not include cached requests)",
            |s| s.finished,
        ),
        Family {
            name: "nv_trt_llm_request_metrics",
            kind: "gauge",
            help: "TRT LLM request metrics",
            samples: Samples::By(
                "request_type",
                &[
                    ("waiting", |s| s.waiting),
                    ("context", |s| s.prefilling),
                    ("scheduled", |s| s.running),
                    ("max", |s| s.max_seqs),
                    // TensorRT-LLM counts queued requests as active too.
                    ("active", |s| s.running + s.waiting),
                ],
            ),
        },
        Family {
            name: "nv_trt_llm_kv_cache_block_metrics",
            kind: "gauge",
            help: "TRT LLM KV cache block metrics",
            samples: Samples::By(
                "kv_cache_block_type",
                &[
                    ("max", |s| s.blocks().0),
                    ("free", |s| s.blocks().0 - s.blocks().1),
                    ("used", |s| s.blocks().1),
                    ("tokens_per", |_| BLOCK),
                    ("fraction", |s| s.kv),
                ],
            ),
        },
    ],
};

struct Out {
    text: String,
    /// The flavour's labels with their values, sorted by name as the servers write them.
    labels: Vec<(&'static str, String)>,
}

impl Out {
    fn header(&mut self, f: &Family) {
        if !f.help.is_empty() {
            let _ = writeln!(self.text, "# HELP {} {}", f.name, f.help);
        }
        let _ = writeln!(self.text, "# TYPE {} {}", f.name, f.kind);
    }

    /// One sample; `extra` joins the flavour's labels, all sorted by name.
    fn sample(&mut self, name: &str, suffix: &str, extra: Option<(&str, &str)>, value: f64) {
        let mut labels: Vec<(&str, &str)> =
            self.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.extend(extra);
        labels.sort_by_key(|(k, _)| *k);
        let _ = write!(self.text, "{name}{suffix}");
        if !labels.is_empty() {
            let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = write!(self.text, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.text, " {value:?}");
    }

    fn family(&mut self, f: &Family, s: &State) {
        self.header(f);
        match &f.samples {
            Samples::One(read) => self.sample(f.name, "", None, read(s)),
            Samples::By(label, values) => {
                for (v, read) in values.iter() {
                    self.sample(f.name, "", Some((label, v)), read(s));
                }
            }
            Samples::Histogram(h) => {
                let h = match h {
                    Hist::Ttft => &s.engine.ttft,
                    Hist::E2e => &s.engine.e2e_latency,
                    Hist::Queue => &s.engine.queue_time,
                };
                self.histogram(f.name, h);
            }
        }
    }

    fn histogram(&mut self, name: &str, h: &Histogram) {
        let (cumulative, sum) = h.snapshot();
        let total = cumulative.last().copied().unwrap_or(0);
        self.sample(name, "_sum", None, sum);
        for (bound, count) in h.bounds.iter().zip(&cumulative) {
            let le = format!("{bound:?}");
            self.sample(name, "_bucket", Some(("le", &le)), *count as f64);
        }
        self.sample(name, "_bucket", Some(("le", "+Inf")), total as f64);
        self.sample(name, "_count", None, total as f64);
    }
}

/// Renders the current engine state.
pub fn render(engine: &Engine) -> String {
    let flavor = match engine.config.metrics_flavor {
        MetricsFlavor::Vllm => &VLLM,
        MetricsFlavor::Sglang => &SGLANG,
        MetricsFlavor::Tgi => &TGI,
        MetricsFlavor::Triton => &TRITON,
    };
    let model = escape(engine.config.primary_model());
    let mut o = Out {
        text: String::with_capacity(8192),
        labels: flavor
            .labels
            .iter()
            .map(|(k, v)| (*k, v.replace("{model}", &model)))
            .collect(),
    };
    let state = State::read(engine);
    for f in flavor.families {
        o.family(f, &state);
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;
    use clap::Parser;

    fn engine(flavor: &str) -> std::sync::Arc<Engine> {
        let cfg = SimConfig::parse_from([
            "modelgate-sim",
            "--metrics-flavor",
            flavor,
            "--served-model-name",
            "m\"x",
            "--kv-cache-tokens",
            "160",
        ]);
        let e = Engine::new(cfg);
        e.running.store(2, Ordering::Relaxed);
        e.waiting.store(3, Ordering::Relaxed);
        e.prefilling.store(1, Ordering::Relaxed);
        e.kv_tokens.store(40, Ordering::Relaxed);
        e.reserved_tokens.store(100, Ordering::Relaxed);
        e
    }

    #[test]
    fn vllm_escapes_label_and_reports_state() {
        let text = render(&engine("vllm"));
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\\\"x\"} 2.0\n"));
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\\\"x\"} 3.0\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\"} 0.25\n"));
        assert!(text.contains("vllm:gpu_cache_usage_perc{model_name=\"m\\\"x\"} 0.25\n"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"m\\\"x\"} 0.0\n"
        ));
    }

    #[test]
    fn triton_follows_tensorrt_llm_semantics() {
        let text = render(&engine("triton"));
        let series = |t: &str| {
            format!(
                "nv_trt_llm_request_metrics{{model=\"m\\\"x\",request_type=\"{t}\",version=\"1\"}}"
            )
        };
        assert!(text.contains(&format!("{} 3.0\n", series("waiting"))));
        assert!(text.contains(&format!("{} 2.0\n", series("scheduled"))));
        assert!(text.contains(&format!("{} 5.0\n", series("active"))));
        assert!(text.contains(&format!("{} 1.0\n", series("context"))));
        // 160 tokens = 10 blocks of 16; 40 tokens held = 3 blocks.
        assert!(text.contains("kv_cache_block_type=\"max\",model=\"m\\\"x\",version=\"1\"} 10.0\n"));
        assert!(text.contains("kv_cache_block_type=\"used\",model=\"m\\\"x\",version=\"1\"} 3.0\n"));
        assert!(text
            .contains("kv_cache_block_type=\"fraction\",model=\"m\\\"x\",version=\"1\"} 0.25\n"));
    }

    #[test]
    fn tgi_and_sglang() {
        let text = render(&engine("tgi"));
        assert!(text.contains("tgi_queue_size 3.0\n"));
        assert!(text.contains("tgi_batch_current_size 2.0\n"));
        assert!(text.contains("tgi_batch_current_max_tokens 100.0\n"));
        assert!(!text.contains("# HELP"));
        let text = render(&engine("sglang"));
        assert!(text.contains("sglang:num_queue_reqs{model_name=\"m\\\"x\"} 3.0\n"));
        assert!(text.contains("sglang:num_running_reqs{model_name=\"m\\\"x\"} 2.0\n"));
        assert!(text.contains("sglang:token_usage{model_name=\"m\\\"x\"} 0.25\n"));
    }
}
