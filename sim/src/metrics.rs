//! Prometheus text for `/metrics`: the engine state under vLLM's names, or (with
//! `--metrics-flavor`) under SGLang's, TGI's or Triton/TensorRT-LLM's.

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

struct Out {
    text: String,
    /// `model_name="..."` (or the flavor's equivalent); empty for unlabelled flavors.
    labels: String,
}

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        if !help.is_empty() {
            let _ = writeln!(self.text, "# HELP {name} {help}");
        }
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &str, value: f64) {
        let sep = if extra.is_empty() || self.labels.is_empty() {
            ""
        } else {
            ","
        };
        if extra.is_empty() && self.labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value:?}");
        } else {
            let _ = writeln!(self.text, "{name}{{{extra}{sep}{}}} {value:?}", self.labels);
        }
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, "", value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let (cumulative, sum) = h.snapshot();
        let total = cumulative.last().copied().unwrap_or(0);
        self.sample(&format!("{name}_sum"), "", sum);
        for (bound, count) in h.bounds.iter().zip(&cumulative) {
            self.sample(
                &format!("{name}_bucket"),
                &format!("le=\"{bound:?}\""),
                *count as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), "le=\"+Inf\"", total as f64);
        self.sample(&format!("{name}_count"), "", total as f64);
    }
}

/// Renders the current engine state.
pub fn render(engine: &Engine) -> String {
    let cfg = &engine.config;
    let model = escape(cfg.primary_model());
    let running = engine.running.load(Ordering::Relaxed) as f64;
    let waiting = engine.waiting.load(Ordering::Relaxed) as f64;
    let kv = engine.kv_usage();
    let kv_used = engine.kv_tokens.load(Ordering::Relaxed) as f64;
    let reserved = engine.reserved_tokens.load(Ordering::Relaxed) as f64;
    let prefilling = engine.prefilling.load(Ordering::Relaxed) as f64;
    let prompt = engine.prompt_tokens_total.load(Ordering::Relaxed) as f64;
    let generated = engine.generation_tokens_total.load(Ordering::Relaxed) as f64;
    let stop = engine.success_stop.load(Ordering::Relaxed) as f64;
    let length = engine.success_length.load(Ordering::Relaxed) as f64;
    let requests = engine.requests_total.load(Ordering::Relaxed) as f64;

    let mut o = Out {
        text: String::with_capacity(8192),
        labels: String::new(),
    };
    match cfg.metrics_flavor {
        MetricsFlavor::Vllm => {
            o.labels = format!("model_name=\"{model}\"");
            o.metric(
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                running,
            );
            o.metric(
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                waiting,
            );
            o.metric(
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                kv,
            );
            o.metric(
                "vllm:gpu_cache_usage_perc",
                "gauge",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                kv,
            );
            o.metric(
                "vllm:num_preemptions_total",
                "counter",
                "Cumulative number of preemption from the engine.",
                0.0,
            );
            o.metric(
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                prompt,
            );
            o.metric(
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prefix-cache queries, in terms of number of queried tokens.",
                engine.prefix_queries_total.load(Ordering::Relaxed) as f64,
            );
            o.metric(
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prefix-cache hits, in terms of number of cached tokens.",
                engine.prefix_hits_total.load(Ordering::Relaxed) as f64,
            );
            o.metric(
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                generated,
            );
            o.header(
                "vllm:request_success_total",
                "counter",
                "Count of successfully processed requests.",
            );
            o.sample(
                "vllm:request_success_total",
                "finished_reason=\"stop\"",
                stop,
            );
            o.sample(
                "vllm:request_success_total",
                "finished_reason=\"length\"",
                length,
            );
            o.histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &engine.ttft,
            );
            o.histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &engine.e2e_latency,
            );
            o.histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &engine.queue_time,
            );
        }
        MetricsFlavor::Sglang => {
            o.labels = format!("model_name=\"{model}\"");
            o.metric(
                "sglang:num_running_reqs",
                "gauge",
                "The number of running requests.",
                running,
            );
            o.metric(
                "sglang:num_queue_reqs",
                "gauge",
                "The number of requests in the waiting queue.",
                waiting,
            );
            o.metric(
                "sglang:num_used_tokens",
                "gauge",
                "The number of used tokens.",
                kv_used,
            );
            o.metric("sglang:token_usage", "gauge", "The token usage.", kv);
            o.metric(
                "sglang:max_total_num_tokens",
                "gauge",
                "Maximum total number of tokens.",
                cfg.kv_cache_tokens as f64,
            );
            o.metric(
                "sglang:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                prompt,
            );
            o.metric(
                "sglang:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                generated,
            );
            o.metric(
                "sglang:num_requests_total",
                "counter",
                "Number of requests processed.",
                stop + length,
            );
            o.histogram(
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &engine.ttft,
            );
            o.histogram(
                "sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds",
                &engine.e2e_latency,
            );
        }
        MetricsFlavor::Tgi => {
            // TGI's exporter writes TYPE lines only and no labels.
            o.metric("tgi_queue_size", "gauge", "", waiting);
            o.metric("tgi_batch_current_size", "gauge", "", running);
            // TGI: the token budget the current batch has reserved (prompts + max new tokens).
            o.metric("tgi_batch_current_max_tokens", "gauge", "", reserved);
            o.metric("tgi_request_count", "counter", "", requests);
            o.metric("tgi_request_success", "counter", "", stop + length);
            o.metric("tgi_request_input_count", "counter", "", prompt);
            o.metric(
                "tgi_request_generated_tokens_count",
                "counter",
                "",
                generated,
            );
        }
        MetricsFlavor::Triton => {
            o.labels = format!("model=\"{model}\",version=\"1\"");
            o.metric(
                "nv_inference_pending_request_count",
                "gauge",
                "Instantaneous number of pending requests awaiting execution per-model.",
                waiting,
            );
            o.metric(
                "nv_inference_request_success",
                "counter",
                "Number of successful inference requests, all batch sizes",
                stop + length,
            );
            o.metric(
                "nv_inference_count",
                "counter",
                "Number of inferences performed (does not include cached requests)",
                stop + length,
            );
            // Triton sorts labels by name: model < request_type < version.
            let labels = std::mem::take(&mut o.labels);
            o.header(
                "nv_trt_llm_request_metrics",
                "gauge",
                "TRT LLM request metrics",
            );
            let max = f64::from(cfg.max_num_seqs);
            for (kind, v) in [
                ("waiting", waiting),
                ("context", prefilling),
                ("scheduled", running),
                ("max", max),
                // TensorRT-LLM counts queued requests as active too.
                ("active", running + waiting),
            ] {
                let series = format!("model=\"{model}\",request_type=\"{kind}\",version=\"1\"");
                o.sample("nv_trt_llm_request_metrics", &series, v);
            }
            o.labels = labels;
            // Blocks of 16 tokens, TensorRT-LLM's usual page size.
            const BLOCK: f64 = 16.0;
            let max_blocks = (cfg.kv_cache_tokens as f64 / BLOCK).floor().max(1.0);
            let used_blocks = (kv_used / BLOCK).ceil().min(max_blocks);
            o.header(
                "nv_trt_llm_kv_cache_block_metrics",
                "gauge",
                "TRT LLM KV cache block metrics",
            );
            for (kind, v) in [
                ("max", max_blocks),
                ("free", max_blocks - used_blocks),
                ("used", used_blocks),
                ("tokens_per", BLOCK),
                ("fraction", kv),
            ] {
                let series = format!("kv_cache_block_type=\"{kind}\"");
                o.sample("nv_trt_llm_kv_cache_block_metrics", &series, v);
            }
        }
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
