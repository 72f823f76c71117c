//! Progress: a bar on an interactive terminal, periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a log line without tearing the progress bar.
pub fn println_above(line: &str) {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) if !b.is_finished() => b.println(line),
        _ => eprintln!("{line}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    None,
}

pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Counts silently (no bar, no log); used before a run starts.
    pub fn quiet() -> Arc<Self> {
        Arc::new(Self {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: Instant::now(),
            bar: None,
        })
    }

    pub fn start(mode: ProgressMode, total: u64, label: &str, log_every: Duration) -> Arc<Self> {
        let use_bar = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Log | ProgressMode::None => false,
        };
        let bar = use_bar.then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            b
        });
        if let Ok(mut g) = BAR.lock() {
            *g = bar.clone();
        }
        let p = Arc::new(Self {
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            bar,
        });
        if mode != ProgressMode::None && p.bar.is_none() {
            let weak = Arc::downgrade(&p);
            let label = label.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(log_every).await;
                    let Some(p) = weak.upgrade() else { return };
                    crate::info!("{label}: {}", p.summary());
                }
            });
        }
        p
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn summary(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{:.1}/{:.1} MiB ({:.1} MiB/s)",
            done as f64 / 1048576.0,
            total as f64 / 1048576.0,
            done as f64 / 1048576.0 / secs
        )
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Ok(mut g) = BAR.lock() {
            *g = None;
        }
    }
}
