//! Command line, environment and YAML configuration.
//!
//! Every option can be given as a flag, as a `SPINDLE_*` environment variable, or in the YAML
//! file named by `--config`; a flag or variable wins over the file, the file over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Spindle: an OpenTelemetry-native trace backend with a Tempo-compatible API.
#[derive(Debug, Parser)]
#[command(name = "spindle", version, about, long_about = None)]
pub struct Cli {
    /// What to run (default: `all`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options.
    #[command(flatten)]
    pub options: Options,
}

/// Roles.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Every role in one process: ingester, storage node (one shard) and querier.
    All,
}

/// Options of every role. Defaults are shown in brackets.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// YAML file with any of the options below (snake_case keys, e.g. `data_dir: /var/lib/spindle`).
    #[arg(long, env = "SPINDLE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the Raft log, snapshots and Parquet blocks [./data].
    #[arg(long, env = "SPINDLE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API: Tempo query API, SQL, /metrics [0.0.0.0:3200].
    #[arg(long, env = "SPINDLE_HTTP_ADDR", global = true)]
    pub http_addr: Option<SocketAddr>,
    /// Address of the OTLP/gRPC receiver [0.0.0.0:4317].
    #[arg(long, env = "SPINDLE_OTLP_GRPC_ADDR", global = true)]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// Address of the OTLP/HTTP receiver [0.0.0.0:4318].
    #[arg(long, env = "SPINDLE_OTLP_HTTP_ADDR", global = true)]
    pub otlp_http_addr: Option<SocketAddr>,
    /// Largest OTLP request, compressed or not, e.g. 16MiB [16MiB].
    #[arg(long, env = "SPINDLE_MAX_REQUEST_SIZE", global = true)]
    pub max_request_size: Option<String>,
    /// Unflushed spans of a tenant that trigger a Parquet flush, e.g. 256MiB [256MiB].
    #[arg(long, env = "SPINDLE_FLUSH_MAX_SIZE", global = true)]
    pub flush_max_size: Option<String>,
    /// Age of the oldest unflushed span that triggers a flush, e.g. 2m [2m].
    #[arg(long, env = "SPINDLE_FLUSH_MAX_AGE", global = true)]
    pub flush_max_age: Option<String>,
    /// Unflushed spans at which writes are refused with backpressure (429 / RESOURCE_EXHAUSTED) [768MiB].
    #[arg(long, env = "SPINDLE_MAX_UNFLUSHED_SIZE", global = true)]
    pub max_unflushed_size: Option<String>,
    /// Memory all running queries may use together [512MiB].
    #[arg(long, env = "SPINDLE_QUERY_MEMORY_LIMIT", global = true)]
    pub query_memory_limit: Option<String>,
    /// fsync the Raft log before acknowledging writes [true].
    #[arg(long, env = "SPINDLE_FSYNC", global = true)]
    pub fsync: Option<bool>,
}

/// The YAML file: the same options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    otlp_grpc_addr: Option<SocketAddr>,
    otlp_http_addr: Option<SocketAddr>,
    max_request_size: Option<String>,
    flush_max_size: Option<String>,
    flush_max_age: Option<String>,
    max_unflushed_size: Option<String>,
    query_memory_limit: Option<String>,
    fsync: Option<bool>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// OTLP/gRPC address.
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP address.
    pub otlp_http_addr: SocketAddr,
    /// Largest request (bytes).
    pub max_request_bytes: usize,
    /// Flush size threshold (bytes).
    pub flush_max_bytes: usize,
    /// Flush age threshold.
    pub flush_max_age: Duration,
    /// Backpressure threshold (bytes).
    pub max_unflushed_bytes: usize,
    /// Query memory (bytes).
    pub query_memory_limit: usize,
    /// fsync the log.
    pub fsync: bool,
}

impl Config {
    /// Resolves flags/env over the YAML file over defaults.
    pub fn resolve(o: &Options) -> anyhow::Result<Self> {
        let file = match &o.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let text = |cli: &Option<String>, file: &Option<String>, default: &str| {
            cli.clone().or_else(|| file.clone()).unwrap_or_else(|| default.to_string())
        };
        let size = |name: &str, value: String| parse_size(&value).with_context(|| format!("invalid {name} {value:?}"));
        Ok(Self {
            data_dir: o.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data")),
            http_addr: o.http_addr.or(file.http_addr).unwrap_or(([0, 0, 0, 0], 3200).into()),
            otlp_grpc_addr: o.otlp_grpc_addr.or(file.otlp_grpc_addr).unwrap_or(([0, 0, 0, 0], 4317).into()),
            otlp_http_addr: o.otlp_http_addr.or(file.otlp_http_addr).unwrap_or(([0, 0, 0, 0], 4318).into()),
            max_request_bytes: size("max_request_size", text(&o.max_request_size, &file.max_request_size, "16MiB"))?,
            flush_max_bytes: size("flush_max_size", text(&o.flush_max_size, &file.flush_max_size, "256MiB"))?,
            flush_max_age: {
                let v = text(&o.flush_max_age, &file.flush_max_age, "2m");
                parse_duration(&v).with_context(|| format!("invalid flush_max_age {v:?}"))?
            },
            max_unflushed_bytes: size("max_unflushed_size", text(&o.max_unflushed_size, &file.max_unflushed_size, "768MiB"))?,
            query_memory_limit: size("query_memory_limit", text(&o.query_memory_limit, &file.query_memory_limit, "512MiB"))?,
            fsync: o.fsync.or(file.fsync).unwrap_or(true),
        })
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Parses `1024`, `64KiB`, `16MiB`, `1GiB` (also `KB`, `MB`, `GB` as powers of 1000).
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number.parse().context("expected a number of bytes like 16MiB")?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => bail!("unknown size unit {other:?}"),
    };
    n.checked_mul(scale).filter(|v| *v > 0).context("size must be positive and fit in memory")
}

/// Parses `500ms`, `30s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().context("expected a duration like 30s")?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => bail!("unknown duration unit {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn precedence() {
        let dir = std::env::temp_dir().join(format!("spindle-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "data_dir: /from/file\nhttp_addr: 127.0.0.1:9999\n").unwrap();
        let cli = Cli::parse_from(["spindle", "--config", path.to_str().unwrap(), "--http-addr", "127.0.0.1:1234"]);
        let c = Config::resolve(&cli.options).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http_addr, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(c.otlp_grpc_addr, "0.0.0.0:4317".parse().unwrap());
        std::fs::write(&path, "nonsense_key: 1\n").unwrap();
        assert!(Config::resolve(&cli.options).is_err());
    }
}
