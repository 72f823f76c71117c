//! Command line. The seed's environment variables (MODEL_ID, MODEL_DIR, READY_FILE,
//! METADATA_FILE, POLL_INTERVAL) are the defaults of the matching flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::progress::ProgressMode;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "modelgate-loader",
    version,
    about = "Downloads, verifies and hot-updates a model"
)]
pub struct Args {
    /// hf://org/name[@rev], org/name, s3://bucket/prefix, gs://…, az://…, https://…/file[.tar.gz], file:///path or a path.
    #[arg(long, env = "MODEL_ID")]
    pub source: String,
    /// Revision (branch, tag or commit) for Hub sources; `@rev` in the source wins.
    #[arg(long, env = "MODEL_REVISION")]
    pub revision: Option<String>,
    /// The served path: a symlink to the current revision's directory.
    #[arg(long, env = "MODEL_DIR", visible_alias = "model-dir")]
    pub dest: PathBuf,
    /// Where revisions live [default: <dest's parent>/.<dest name>.versions].
    #[arg(long, env = "MODELGATE_VERSIONS_DIR")]
    pub versions_dir: Option<PathBuf>,
    /// Sentinel written once a verified revision is served [default: <dest>/.ready].
    #[arg(long, env = "READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// JSON with the revision actually served [default: <dest>/metadata.json].
    #[arg(long, env = "METADATA_FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Check the source for a new revision this often ("300" = seconds, "5m", "30s"); 0 = never.
    #[arg(long, env = "POLL_INTERVAL", default_value = "0", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Download (or confirm) the current revision, then exit: for initContainers.
    #[arg(long, env = "MODELGATE_ONCE")]
    pub once: bool,
    /// Only files matching these globs (comma-separated or repeated).
    #[arg(long, env = "MODELGATE_INCLUDE", value_delimiter = ',')]
    pub include: Vec<String>,
    /// Skip files matching these globs (comma-separated or repeated).
    #[arg(long, env = "MODELGATE_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Expected sha256 of a single-file source (http file or archive, one object).
    #[arg(long, env = "MODELGATE_SHA256")]
    pub sha256: Option<String>,
    /// `sha256sum`-format file listing every file's expected sha256.
    #[arg(long, env = "MODELGATE_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// Hugging Face Hub endpoint.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// Hub token (sent only to the Hub endpoint, never logged).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// Files downloaded at once.
    #[arg(long, env = "MODELGATE_PARALLEL_FILES", default_value_t = 4)]
    pub parallel_files: usize,
    /// Byte ranges of one large file downloaded at once.
    #[arg(long, env = "MODELGATE_PARALLEL_RANGES", default_value_t = 4)]
    pub parallel_ranges: usize,
    /// Open connections across all files.
    #[arg(long, env = "MODELGATE_CONNECTIONS", default_value_t = 8)]
    pub connections: usize,
    /// Range size for large files ("8MiB", "16MB", bytes).
    #[arg(long, env = "MODELGATE_CHUNK_SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub chunk_size: u64,
    #[arg(long, env = "MODELGATE_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// A connection that delivers no byte for this long is dropped and retried.
    #[arg(long, env = "MODELGATE_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Retries per request (and per file on integrity failures).
    #[arg(long, env = "MODELGATE_RETRIES", default_value_t = 8)]
    pub retries: u32,
    #[arg(long, env = "MODELGATE_RETRY_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub retry_base: Duration,
    #[arg(long, env = "MODELGATE_RETRY_MAX", default_value = "30s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Complete revisions kept on disk, the served one included.
    #[arg(long, env = "MODELGATE_KEEP", default_value_t = 2)]
    pub keep: usize,
    /// Bytes that must stay free after the download ("1GiB").
    #[arg(long, env = "MODELGATE_MIN_FREE", default_value = "0", value_parser = parse_size)]
    pub min_free: u64,
    /// Most entries an archive source may hold.
    #[arg(long, env = "MODELGATE_MAX_ARCHIVE_ENTRIES", default_value_t = 100_000)]
    pub max_archive_entries: u64,
    /// Most bytes an archive source may unpack to ("512GiB"); guards against archive bombs.
    #[arg(long, env = "MODELGATE_MAX_UNPACKED", default_value = "1TiB", value_parser = parse_size)]
    pub max_unpacked: u64,
    /// Run after each switch to a new revision (`sh -c`; env MODELGATE_REVISION, MODELGATE_PREVIOUS_REVISION, MODELGATE_PATH).
    #[arg(long, env = "MODELGATE_UPDATE_HOOK_CMD")]
    pub update_hook_cmd: Option<String>,
    /// POSTed a JSON {revision, previous_revision, path} after each switch.
    #[arg(long, env = "MODELGATE_UPDATE_HOOK_URL")]
    pub update_hook_url: Option<String>,
    /// Status server (/ready, /healthz, /metrics), e.g. 0.0.0.0:8089.
    #[arg(long, env = "MODELGATE_STATUS_ADDR")]
    pub status_addr: Option<SocketAddr>,
    #[arg(long, env = "MODELGATE_PROGRESS", value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Interval of progress log lines when no bar is shown.
    #[arg(long, env = "MODELGATE_PROGRESS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
}

/// "300" (seconds, as the seed's POLL_INTERVAL), "500ms", "30s", "5m", "1h".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("`{text}` is not a duration like \"300\", \"500ms\", \"30s\", \"5m\"")
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{text}` must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// "8MiB", "16MB", "1GiB", "1048576".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let units: [(&str, f64); 10] = [
        ("TiB", 1099511627776.0),
        ("TB", 1e12),
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("B", 1.0),
        ("", 1.0),
    ];
    for (suffix, mult) in units {
        if let Some(n) = t.strip_suffix(suffix) {
            if let Ok(v) = n.trim().parse::<f64>() {
                if v.is_finite() && v >= 0.0 {
                    return Ok((v * mult) as u64);
                }
            }
        }
    }
    Err(format!(
        "`{text}` is not a size like \"8MiB\", \"16MB\" or a byte count"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn seed_env_vars_are_flag_defaults() {
        // One test touches the env, so no race with others in this binary.
        std::env::set_var("MODEL_ID", "org/model");
        std::env::set_var("MODEL_DIR", "/models/model");
        std::env::set_var("POLL_INTERVAL", "60");
        let a = Args::try_parse_from(["modelgate-loader"]).unwrap();
        assert_eq!(a.source, "org/model");
        assert_eq!(a.dest, PathBuf::from("/models/model"));
        assert_eq!(a.poll_interval, Duration::from_secs(60));
    }
}
