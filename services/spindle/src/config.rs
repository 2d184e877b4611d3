//! Command line, environment and YAML configuration.
//!
//! Every option can be given as a flag, as a `SPINDLE_*` environment variable, or in the YAML
//! file named by `--config`; a flag or variable wins over the file, the file over the default.
//! Some defaults depend on the role (`spindle all` is a one-node cluster with one shard; a
//! `spindle storage` node joins a replicated cluster).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use spindle_generator::GeneratorSettings;
use spindle_limits::LimitsPolicy;
use spindle_storage::store::{StoreLocation, StoreOptions};
use spindle_storage::RetentionPolicy;
use spindle_types::parse_std_duration;

use crate::generator_config::{generator_settings, GeneratorFile};
use crate::limits_config::{limits_policy, LimitsFile};

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

/// `spindle certs`: its own arguments, parsed before the roles' options.
#[derive(Debug, Parser)]
#[command(name = "spindle certs")]
pub struct CertsCli {
    /// Directory of the cluster CA (`ca.pem`, `ca-key.pem`) and the new certificate.
    pub dir: PathBuf,
    /// Names the node is called at by other nodes (host names or IP addresses); the first one
    /// names the files (`<name>.pem`, `<name>-key.pem`).
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Every role in one process: a one-node cluster (ingester, storage node, querier) with its
    /// data under --data-dir. No configuration needed.
    All,
    /// A storage node: hosts shard replicas and the cluster metadata (needs --node-id,
    /// --grpc-addr/--advertise-addr, and --seeds or --bootstrap-expect).
    Storage,
    /// A stateless OTLP ingester (needs --seeds).
    Ingester,
    /// A stateless querier: Tempo API and SQL (needs --seeds).
    Querier,
    /// A stateless compactor: merges small blocks into large ones (needs --seeds and the
    /// storage nodes' --storage-url).
    Compactor,
    /// A metrics generator: span metrics and service graphs from the spans ingesters send it
    /// (ingesters list it in --generators); serves --grpc-addr [0.0.0.0:7500] and the HTTP API.
    Generator,
    /// Prints a new random API key and the entry for it in the --api-keys-file, then exits.
    Keygen,
    /// `spindle certs DIR NAME...`: writes a node certificate for the internal API's mutual
    /// TLS, valid for the NAMEs (host names or IP addresses), signed by the cluster CA in DIR
    /// (made first when DIR has none), then exits.
    Certs,
}

impl Command {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Command::All => "all",
            Command::Storage => "storage",
            Command::Ingester => "ingester",
            Command::Querier => "querier",
            Command::Compactor => "compactor",
            Command::Generator => "generator",
            Command::Keygen => "keygen",
            Command::Certs => "certs",
        }
    }
}

/// Options of every role. Defaults are shown in brackets.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// YAML file with any of the options below (snake_case keys, e.g. `data_dir: /var/lib/spindle`).
    #[arg(long, env = "SPINDLE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the Raft logs and snapshots (and blocks, with the default --storage-url) [./data].
    #[arg(long, env = "SPINDLE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Where blocks are stored: file:///path, s3://bucket/prefix, az://container/prefix or
    /// gs://bucket/prefix; credentials come from each cloud's environment
    /// (docs/operations.md) [file://<data-dir>/blocks].
    #[arg(long, env = "SPINDLE_STORAGE_URL", global = true)]
    pub storage_url: Option<String>,
    /// Endpoint of an S3-compatible store or an Azure Blob emulator, e.g. http://127.0.0.1:9000
    /// [the cloud's own].
    #[arg(long, env = "SPINDLE_STORAGE_ENDPOINT", global = true)]
    pub storage_endpoint: Option<String>,
    /// Queriers: local directory caching whole block files read from the object store
    /// [no disk cache].
    #[arg(long, env = "SPINDLE_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Queriers: most bytes kept in --cache-dir [10GiB].
    #[arg(long, env = "SPINDLE_CACHE_SIZE", global = true)]
    pub cache_size: Option<String>,
    /// Queriers: memory for cached Parquet footers, page indexes, Bloom filters and small
    /// block reads [256MiB].
    #[arg(long, env = "SPINDLE_MEMORY_CACHE_SIZE", global = true)]
    pub memory_cache_size: Option<String>,
    /// How long blocks are kept, e.g. 14d; per-tenant overrides go in the config file's
    /// `tenants:` section (reloaded without a restart) [forever].
    #[arg(long, env = "SPINDLE_RETENTION", global = true)]
    pub retention: Option<String>,
    /// How often shard leaders apply retention and delete retired blocks, and how often the
    /// config file is checked for changed retention [30s].
    #[arg(long, env = "SPINDLE_RETENTION_INTERVAL", global = true)]
    pub retention_interval: Option<String>,
    /// Blocks replaced by compaction or past retention are deleted this long after, so
    /// queries already reading them can finish [10m].
    #[arg(long, env = "SPINDLE_BLOCK_DELETE_GRACE", global = true)]
    pub block_delete_grace: Option<String>,
    /// `spindle all`: run the compactor in the process [true].
    #[arg(long, env = "SPINDLE_COMPACTOR", global = true)]
    pub compactor: Option<bool>,
    /// Compactor: blocks at least this large are final; merges gather about this much [128MiB].
    #[arg(long, env = "SPINDLE_COMPACTION_TARGET_SIZE", global = true)]
    pub compaction_target_size: Option<String>,
    /// Compactor: only blocks whose earliest spans fall in the same window are merged [1h].
    #[arg(long, env = "SPINDLE_COMPACTION_WINDOW", global = true)]
    pub compaction_window: Option<String>,
    /// Compactor: how long a merge may take; the window of a compactor that crashed mid-merge
    /// is merged again once this has passed [10m].
    #[arg(long, env = "SPINDLE_COMPACTION_LEASE", global = true)]
    pub compaction_lease: Option<String>,
    /// Compactor: pause between rounds over all shards [30s].
    #[arg(long, env = "SPINDLE_COMPACTION_INTERVAL", global = true)]
    pub compaction_interval: Option<String>,
    /// Address of the HTTP API: Tempo query API, SQL, /metrics, /ready, /admin [127.0.0.1:3200].
    /// Listening beyond loopback needs --api-keys-file or --trust-tenant-header.
    #[arg(long, env = "SPINDLE_HTTP_ADDR", global = true)]
    pub http_addr: Option<SocketAddr>,
    /// Address of the OTLP/gRPC receiver [127.0.0.1:4317].
    #[arg(long, env = "SPINDLE_OTLP_GRPC_ADDR", global = true)]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// Address of the OTLP/HTTP receiver [127.0.0.1:4318].
    #[arg(long, env = "SPINDLE_OTLP_HTTP_ADDR", global = true)]
    pub otlp_http_addr: Option<SocketAddr>,
    /// Address of the Zipkin receiver (`POST /api/v2/spans`, JSON or protobuf); empty turns it
    /// off [127.0.0.1:9411].
    #[arg(long, env = "SPINDLE_ZIPKIN_ADDR", global = true)]
    pub zipkin_addr: Option<String>,
    /// Storage nodes: listen address of the internal gRPC API (push, read, metadata, Raft)
    /// [storage: 0.0.0.0:7400; all: not served].
    #[arg(long, env = "SPINDLE_GRPC_ADDR", global = true)]
    pub grpc_addr: Option<SocketAddr>,
    /// Storage nodes: the address other nodes reach --grpc-addr at (host:port, stable across
    /// restarts) [--grpc-addr, with this host's name for 0.0.0.0].
    #[arg(long, env = "SPINDLE_ADVERTISE_ADDR", global = true)]
    pub advertise_addr: Option<String>,
    /// Storage nodes: this node's id, a positive integer unique in the cluster and stable
    /// across restarts [1].
    #[arg(long, env = "SPINDLE_NODE_ID", global = true)]
    pub node_id: Option<u64>,
    /// Internal addresses of storage nodes (comma-separated host:port) to join through
    /// (storage) or to learn the topology from (ingester, querier).
    #[arg(long, env = "SPINDLE_SEEDS", global = true, value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Storage nodes: how many storage nodes (this one included) must be up before a new
    /// cluster is created; the one with the lowest id creates it [1].
    #[arg(long, env = "SPINDLE_BOOTSTRAP_EXPECT", global = true)]
    pub bootstrap_expect: Option<usize>,
    /// New cluster: number of shards [all: 1, storage: 8].
    #[arg(long, env = "SPINDLE_SHARDS", global = true)]
    pub shards: Option<u32>,
    /// New cluster: copies of each shard [all: 1, storage: min(3, --bootstrap-expect)].
    #[arg(long, env = "SPINDLE_REPLICATION_FACTOR", global = true)]
    pub replication_factor: Option<u32>,
    /// New cluster: shards one tenant's traces are spread over, 0 for all [0].
    #[arg(long, env = "SPINDLE_SHARDS_PER_TENANT", global = true)]
    pub shards_per_tenant: Option<u32>,
    /// `spindle storage --leave`: drain this node (--node-id) through --seeds, wait until its
    /// replicas live elsewhere, and exit.
    #[arg(long, global = true)]
    pub leave: bool,
    /// Ingesters: how long a write may keep retrying across leader changes before the client
    /// gets 503/UNAVAILABLE [15s].
    #[arg(long, env = "SPINDLE_WRITE_TIMEOUT", global = true)]
    pub write_timeout: Option<String>,
    /// Largest OTLP request, compressed or not, e.g. 16MiB [16MiB].
    #[arg(long, env = "SPINDLE_MAX_REQUEST_SIZE", global = true)]
    pub max_request_size: Option<String>,
    /// Unflushed spans of a tenant that trigger a Parquet flush, e.g. 256MiB [256MiB].
    #[arg(long, env = "SPINDLE_FLUSH_MAX_SIZE", global = true)]
    pub flush_max_size: Option<String>,
    /// Age of the oldest unflushed span that triggers a flush, e.g. 2m [2m].
    #[arg(long, env = "SPINDLE_FLUSH_MAX_AGE", global = true)]
    pub flush_max_age: Option<String>,
    /// Unflushed spans on a storage node (all its shard replicas) at which writes are refused with
    /// backpressure (429 / RESOURCE_EXHAUSTED) [768MiB].
    #[arg(long, env = "SPINDLE_MAX_UNFLUSHED_SIZE", global = true)]
    pub max_unflushed_size: Option<String>,
    /// Memory all running queries may use together [512MiB].
    #[arg(long, env = "SPINDLE_QUERY_MEMORY_LIMIT", global = true)]
    pub query_memory_limit: Option<String>,
    /// Longest a query (SQL, TraceQL search, metrics, tags) may run before it is refused with
    /// 429 [60s].
    #[arg(long, env = "SPINDLE_QUERY_TIMEOUT", global = true)]
    pub query_timeout: Option<String>,
    /// Ingesters: bytes of OTLP requests (protobuf size) the node works on at once; more are
    /// refused at once with 429 / RESOURCE_EXHAUSTED and a retry hint [256MiB].
    #[arg(long, env = "SPINDLE_INGEST_INFLIGHT_LIMIT", global = true)]
    pub ingest_inflight_limit: Option<String>,
    /// Ingesters: OTLP requests each receiver (gRPC, HTTP) takes at once, before reading them;
    /// more are refused unread with 429 / RESOURCE_EXHAUSTED [64].
    #[arg(long, env = "SPINDLE_INGEST_MAX_CONCURRENT_REQUESTS", global = true)]
    pub ingest_max_concurrent_requests: Option<usize>,
    /// Queriers: query API requests the node runs at once, all tenants together; more get 429
    /// [32].
    #[arg(long, env = "SPINDLE_QUERY_MAX_CONCURRENT", global = true)]
    pub query_max_concurrent: Option<usize>,
    /// Longest an external request may take, body included (a client trickling a body is
    /// answered 408, a gRPC call CANCELLED) [2m].
    #[arg(long, env = "SPINDLE_REQUEST_TIMEOUT", global = true)]
    pub request_timeout: Option<String>,
    /// Longest a client may take, on any listener, to start talking after connecting, and on
    /// HTTP/1 to send each request head; an idle keep-alive connection is closed after it [30s].
    #[arg(long, env = "SPINDLE_HEADER_READ_TIMEOUT", global = true)]
    pub header_read_timeout: Option<String>,
    /// Most rows of one SQL answer (more: 422, add a LIMIT) [1000000].
    #[arg(long, env = "SPINDLE_SQL_MAX_ROWS", global = true)]
    pub sql_max_rows: Option<usize>,
    /// Most Arrow bytes of one SQL answer (more: 422) [64MiB].
    #[arg(long, env = "SPINDLE_SQL_MAX_SIZE", global = true)]
    pub sql_max_size: Option<String>,
    /// fsync the Raft log before acknowledging writes [true].
    #[arg(long, env = "SPINDLE_FSYNC", global = true)]
    pub fsync: Option<bool>,
    /// `spindle all`: run the metrics generator in the process (span metrics, service graphs;
    /// settings in the config file's `generator:` section) [true].
    #[arg(long, env = "SPINDLE_GENERATOR", global = true)]
    pub generator: Option<bool>,
    /// Ingesters: internal addresses (host:port) of the metrics generators to send spans to,
    /// each the traces it owns [none].
    #[arg(long, env = "SPINDLE_GENERATORS", global = true, value_delimiter = ',')]
    pub generators: Option<Vec<String>>,
    /// YAML file of API keys (hashed; `spindle keygen` makes one): OTLP and query requests must
    /// then send `Authorization: Bearer <key>`, and the key decides the tenant. Re-read when it
    /// changes [none].
    #[arg(long, env = "SPINDLE_API_KEYS_FILE", global = true)]
    pub api_keys_file: Option<PathBuf>,
    /// Without API keys, trust `X-Scope-OrgID` from any client on a non-loopback listener (behind
    /// a gateway that authenticates) [false].
    #[arg(long, env = "SPINDLE_TRUST_TENANT_HEADER", global = true)]
    pub trust_tenant_header: Option<bool>,
    /// Shared by every node of a cluster: internal gRPC calls (pushes, reads, metadata, Raft,
    /// generator pushes) must carry it; required when --grpc-addr is beyond loopback [none].
    #[arg(long, env = "SPINDLE_CLUSTER_SECRET", global = true, hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// PEM certificate chain for TLS on the HTTP API and the OTLP receivers (with
    /// --tls-key-file); re-read when it changes [no TLS].
    #[arg(long, env = "SPINDLE_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "SPINDLE_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    /// Development: TLS with a new self-signed certificate, written to <data-dir>/tls/cert.pem
    /// for clients to trust [false].
    #[arg(long, env = "SPINDLE_TLS_SELF_SIGNED", global = true)]
    pub tls_self_signed: Option<bool>,
    /// PEM certificate(s) of the cluster CA: the internal gRPC API then speaks mutual TLS, and
    /// only nodes with a certificate from this CA can connect (`spindle certs` makes one) [no TLS].
    #[arg(long, env = "SPINDLE_INTERNAL_TLS_CA_FILE", global = true)]
    pub internal_tls_ca_file: Option<PathBuf>,
    /// This node's PEM certificate from the cluster CA (server and client use); re-read when
    /// it changes.
    #[arg(long, env = "SPINDLE_INTERNAL_TLS_CERT_FILE", global = true)]
    pub internal_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --internal-tls-cert-file.
    #[arg(long, env = "SPINDLE_INTERNAL_TLS_KEY_FILE", global = true)]
    pub internal_tls_key_file: Option<PathBuf>,
    /// The name every member's certificate carries, checked instead of the host each node is
    /// called at [the host of the address].
    #[arg(long, env = "SPINDLE_INTERNAL_TLS_SERVER_NAME", global = true)]
    pub internal_tls_server_name: Option<String>,
}

/// The YAML file: the same options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    storage_url: Option<String>,
    storage_endpoint: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    memory_cache_size: Option<String>,
    retention: Option<String>,
    retention_interval: Option<String>,
    block_delete_grace: Option<String>,
    compactor: Option<bool>,
    compaction_target_size: Option<String>,
    compaction_window: Option<String>,
    compaction_interval: Option<String>,
    compaction_lease: Option<String>,
    tenants: Option<HashMap<String, TenantOverrides>>,
    http_addr: Option<SocketAddr>,
    otlp_grpc_addr: Option<SocketAddr>,
    otlp_http_addr: Option<SocketAddr>,
    zipkin_addr: Option<String>,
    grpc_addr: Option<SocketAddr>,
    advertise_addr: Option<String>,
    node_id: Option<u64>,
    seeds: Option<Vec<String>>,
    bootstrap_expect: Option<usize>,
    shards: Option<u32>,
    replication_factor: Option<u32>,
    shards_per_tenant: Option<u32>,
    write_timeout: Option<String>,
    max_request_size: Option<String>,
    flush_max_size: Option<String>,
    flush_max_age: Option<String>,
    max_unflushed_size: Option<String>,
    query_memory_limit: Option<String>,
    query_timeout: Option<String>,
    ingest_inflight_limit: Option<String>,
    ingest_max_concurrent_requests: Option<usize>,
    query_max_concurrent: Option<usize>,
    request_timeout: Option<String>,
    header_read_timeout: Option<String>,
    sql_max_rows: Option<usize>,
    sql_max_size: Option<String>,
    limits: Option<LimitsFile>,
    fsync: Option<bool>,
    generator: Option<GeneratorSection>,
    generators: Option<Vec<String>>,
    api_keys_file: Option<PathBuf>,
    trust_tenant_header: Option<bool>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_self_signed: Option<bool>,
    cluster_secret: Option<String>,
    internal_tls_ca_file: Option<PathBuf>,
    internal_tls_cert_file: Option<PathBuf>,
    internal_tls_key_file: Option<PathBuf>,
    internal_tls_server_name: Option<String>,
}

/// `generator:` is a boolean (run it in `spindle all`) or the generator's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum GeneratorSection {
    Enabled(bool),
    Settings(Box<GeneratorFile>),
}

/// Per-tenant settings in the config file's `tenants:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantOverrides {
    /// How long the tenant's blocks are kept, e.g. `3d`.
    retention: Option<String>,
    /// The tenant's metrics-generator settings (over the top-level `generator:` section).
    generator: Option<GeneratorFile>,
    /// The tenant's limits (over the top-level `limits:` section).
    limits: Option<LimitsFile>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The options it was resolved from (to reload the config file's reloadable parts).
    pub options: Options,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where blocks are stored.
    pub store: StoreLocation,
    /// How the object store is reached.
    pub store_options: StoreOptions,
    /// Disk cache of block files (queriers).
    pub cache_dir: Option<PathBuf>,
    /// Bytes the disk cache may hold.
    pub cache_bytes: u64,
    /// Bytes of the in-memory block cache.
    pub memory_cache_bytes: usize,
    /// Retention (default and per-tenant), as loaded at start.
    pub retention: RetentionPolicy,
    /// How often retention is applied (and the config file checked).
    pub retention_interval: Duration,
    /// How long retired blocks are kept before deletion.
    pub block_delete_grace: Duration,
    /// Run a compactor (`all`, `compactor`).
    pub compactor: bool,
    /// Compaction target size (bytes).
    pub compaction_target_bytes: u64,
    /// Compaction time window.
    pub compaction_window: Duration,
    /// Pause between compaction rounds.
    pub compaction_interval: Duration,
    /// How long a compaction job may take.
    pub compaction_lease: Duration,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// OTLP/gRPC address.
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP address.
    pub otlp_http_addr: SocketAddr,
    /// Zipkin receiver address (`None`: off).
    pub zipkin_addr: Option<SocketAddr>,
    /// Whether `zipkin_addr` is the default, not asked for (then a taken port is skipped with a
    /// warning instead of stopping the start: another Zipkin server may hold 9411).
    pub zipkin_addr_is_default: bool,
    /// Internal gRPC address (`None`: not served).
    pub grpc_addr: Option<SocketAddr>,
    /// Internal address other nodes use.
    pub advertise_addr: String,
    /// Node id.
    pub node_id: u64,
    /// Seed storage nodes.
    pub seeds: Vec<String>,
    /// Nodes to wait for before creating a cluster.
    pub bootstrap_expect: usize,
    /// Shards of a new cluster.
    pub shards: u32,
    /// Replication factor of a new cluster.
    pub replication_factor: u32,
    /// Shards per tenant of a new cluster.
    pub shards_per_tenant: u32,
    /// Drain this node and exit.
    pub leave: bool,
    /// How long writes keep retrying.
    pub write_timeout: Duration,
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
    /// Query time limit.
    pub query_timeout: Duration,
    /// Ingest in-flight byte budget.
    pub ingest_inflight_bytes: usize,
    /// OTLP requests each receiver takes at once.
    pub ingest_max_concurrent_requests: usize,
    /// Query API requests at once.
    pub query_max_concurrent: usize,
    /// Longest external request.
    pub request_timeout: Duration,
    /// Longest wait for a connection's first bytes and an HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// Most rows of an SQL answer.
    pub sql_max_rows: usize,
    /// Most bytes of an SQL answer.
    pub sql_max_bytes: usize,
    /// Per-tenant limits.
    pub limits: LimitsPolicy,
    /// fsync the log.
    pub fsync: bool,
    /// Run a metrics generator (`all`, `generator`).
    pub generator: bool,
    /// The metrics generator's settings.
    pub generator_settings: GeneratorSettings,
    /// Ingesters: metrics generators to send spans to.
    pub generators: Vec<String>,
    /// API keys file (`None`: the tenant header is trusted).
    pub api_keys_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// TLS with a self-signed certificate.
    pub tls_self_signed: bool,
    /// The secret internal calls carry.
    pub cluster_secret: Option<String>,
    /// Mutual TLS on the internal gRPC API.
    pub internal_tls: Option<InternalTlsFiles>,
}

/// The files (and name) of mutual TLS among cluster members.
#[derive(Debug, Clone)]
pub struct InternalTlsFiles {
    /// The cluster CA.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The name peers' certificates must carry, if not their host.
    pub server_name: Option<String>,
}

impl Config {
    /// Resolves flags/env over the YAML file over the role's defaults.
    pub fn resolve(role: Command, o: &Options) -> anyhow::Result<Self> {
        let file = match &o.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let text = |cli: &Option<String>, file: &Option<String>, default: &str| {
            cli.clone().or_else(|| file.clone()).unwrap_or_else(|| default.to_string())
        };
        let size = |name: &str, value: String| parse_size(&value).with_context(|| format!("invalid {name} {value:?}"));
        let duration =
            |name: &str, value: String| parse_std_duration(&value).with_context(|| format!("invalid {name} {value:?}"));
        let storage = role == Command::Storage;
        let retention = retention_policy(o, &file)?;
        let limits = file_limits(&file)?;
        let internal_tls = internal_tls_files(o, &file)?;
        let data_dir = o.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
        let store = match o.storage_url.clone().or(file.storage_url.clone()) {
            None => StoreLocation::Local(data_dir.join("blocks")),
            Some(url) => StoreLocation::parse(&url).with_context(|| "invalid --storage-url".to_string())?,
        };
        let grpc_addr = o.grpc_addr.or(file.grpc_addr).or(match role {
            Command::Storage => Some(([0, 0, 0, 0], 7400).into()),
            Command::Generator => Some(([0, 0, 0, 0], 7500).into()),
            _ => None,
        });
        let http_addr = o.http_addr.or(file.http_addr).unwrap_or(([127, 0, 0, 1], 3200).into());
        let otlp_grpc_addr = o.otlp_grpc_addr.or(file.otlp_grpc_addr).unwrap_or(([127, 0, 0, 1], 4317).into());
        let otlp_http_addr = o.otlp_http_addr.or(file.otlp_http_addr).unwrap_or(([127, 0, 0, 1], 4318).into());
        let zipkin_addr_is_default = o.zipkin_addr.is_none() && file.zipkin_addr.is_none();
        let zipkin_addr = match o.zipkin_addr.clone().or(file.zipkin_addr.clone()) {
            None => Some(([127, 0, 0, 1], 9411).into()),
            Some(text) if text.trim().is_empty() => None,
            Some(text) => Some(text.trim().parse::<SocketAddr>().with_context(|| {
                format!("invalid --zipkin-addr {text:?}: expected host:port (e.g. 127.0.0.1:9411), or empty for off")
            })?),
        };
        let api_keys_file = o.api_keys_file.clone().or(file.api_keys_file.clone());
        let trust_tenant_header = o.trust_tenant_header.or(file.trust_tenant_header).unwrap_or(false);
        let mut external = vec![http_addr];
        if matches!(role, Command::All | Command::Ingester) {
            external.extend([otlp_grpc_addr, otlp_http_addr]);
            external.extend(zipkin_addr);
        }
        if let Some(open) = external.iter().find(|a| !a.ip().is_loopback()) {
            if api_keys_file.is_none() && !trust_tenant_header {
                bail!(
                    "spindle would listen on {open} without API keys, so anyone who reaches it could write and read \
                     every tenant: set --api-keys-file (docs/operations.md, \"API keys\"), or --trust-tenant-header true \
                     when a gateway in front authenticates callers, or listen on 127.0.0.1"
                );
            }
        }
        let cluster_secret = o.cluster_secret.clone().or(file.cluster_secret.clone()).filter(|s| !s.is_empty());
        if let Some(s) = &cluster_secret {
            if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("--cluster-secret must be at least 16 printable ASCII characters (e.g. `openssl rand -hex 32`)");
            }
        }
        let serves_internal = matches!(role, Command::Storage | Command::Generator);
        // `storage --leave` only calls other nodes: it listens on nothing.
        if let Some(addr) = grpc_addr.filter(|a| serves_internal && !o.leave && !a.ip().is_loopback()) {
            if cluster_secret.is_none() && internal_tls.is_none() {
                bail!(
                    "the internal gRPC API would listen on {addr} with no --cluster-secret and no \
                     --internal-tls-ca-file, so anyone who reaches it could write, read and vote: give every node \
                     of the cluster the same --cluster-secret (SPINDLE_CLUSTER_SECRET) or certificates from one CA \
                     (docs/operations.md, \"TLS\"), or listen on 127.0.0.1"
                );
            }
        }
        let tls_cert_file = o.tls_cert_file.clone().or(file.tls_cert_file.clone());
        let tls_key_file = o.tls_key_file.clone().or(file.tls_key_file.clone());
        if tls_cert_file.is_some() != tls_key_file.is_some() {
            bail!("--tls-cert-file and --tls-key-file go together");
        }
        let tls_self_signed = o.tls_self_signed.or(file.tls_self_signed).unwrap_or(false);
        let generator_file = match &file.generator {
            Some(GeneratorSection::Settings(s)) => Some(s.as_ref()),
            _ => None,
        };
        let generator_settings = generator_settings(
            generator_file,
            file.tenants.iter().flatten().map(|(t, o)| (t.clone(), o.generator.clone())),
        )?;
        let generator = match role {
            Command::Generator => true,
            Command::All => o.generator.unwrap_or(match &file.generator {
                Some(GeneratorSection::Enabled(b)) => *b,
                _ => true,
            }),
            _ => false,
        };
        let generators: Vec<String> = o
            .generators
            .clone()
            .or(file.generators.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .collect();
        let advertise_addr = match (o.advertise_addr.clone().or(file.advertise_addr), grpc_addr) {
            (Some(a), _) => a,
            (None, Some(addr)) if addr.ip().is_unspecified() => {
                format!("{}:{}", hostname(), addr.port())
            }
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "in-process".to_string(),
        };
        let node_id = o.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            bail!("--node-id must be a positive integer");
        }
        let seeds: Vec<String> =
            o.seeds.clone().or(file.seeds).unwrap_or_default().into_iter().filter(|s| !s.trim().is_empty()).collect();
        if matches!(role, Command::Ingester | Command::Querier | Command::Compactor) && seeds.is_empty() {
            bail!("spindle {} needs --seeds: the internal addresses of one or more storage nodes", role.name());
        }
        if o.leave && !storage {
            bail!("--leave is an option of `spindle storage`");
        }
        let bootstrap_expect = o.bootstrap_expect.or(file.bootstrap_expect).unwrap_or(1).max(1);
        let shards = o.shards.or(file.shards).unwrap_or(if storage { 8 } else { 1 });
        let replication_factor = o.replication_factor.or(file.replication_factor).unwrap_or(if storage {
            bootstrap_expect.min(3) as u32
        } else {
            1
        });
        if shards == 0 || replication_factor == 0 {
            bail!("--shards and --replication-factor must be at least 1");
        }
        Ok(Self {
            options: o.clone(),
            store,
            store_options: StoreOptions { endpoint: o.storage_endpoint.clone().or(file.storage_endpoint) },
            cache_dir: o.cache_dir.clone().or(file.cache_dir),
            cache_bytes: size("cache_size", text(&o.cache_size, &file.cache_size, "10GiB"))? as u64,
            memory_cache_bytes: size(
                "memory_cache_size",
                text(&o.memory_cache_size, &file.memory_cache_size, "256MiB"),
            )?,
            retention,
            retention_interval: duration(
                "retention_interval",
                text(&o.retention_interval, &file.retention_interval, "30s"),
            )?,
            block_delete_grace: duration(
                "block_delete_grace",
                text(&o.block_delete_grace, &file.block_delete_grace, "10m"),
            )?,
            compactor: match role {
                Command::Compactor => true,
                Command::All => o.compactor.or(file.compactor).unwrap_or(true),
                _ => false,
            },
            compaction_target_bytes: size(
                "compaction_target_size",
                text(&o.compaction_target_size, &file.compaction_target_size, "128MiB"),
            )? as u64,
            compaction_window: duration(
                "compaction_window",
                text(&o.compaction_window, &file.compaction_window, "1h"),
            )?,
            compaction_lease: duration("compaction_lease", text(&o.compaction_lease, &file.compaction_lease, "10m"))?,
            compaction_interval: duration(
                "compaction_interval",
                text(&o.compaction_interval, &file.compaction_interval, "30s"),
            )?,
            data_dir,
            http_addr,
            otlp_grpc_addr,
            otlp_http_addr,
            zipkin_addr,
            zipkin_addr_is_default,
            grpc_addr,
            advertise_addr,
            node_id,
            seeds,
            bootstrap_expect,
            shards,
            replication_factor,
            shards_per_tenant: o.shards_per_tenant.or(file.shards_per_tenant).unwrap_or(0),
            leave: o.leave,
            write_timeout: duration("write_timeout", text(&o.write_timeout, &file.write_timeout, "15s"))?,
            max_request_bytes: size("max_request_size", text(&o.max_request_size, &file.max_request_size, "16MiB"))?,
            flush_max_bytes: size("flush_max_size", text(&o.flush_max_size, &file.flush_max_size, "256MiB"))?,
            flush_max_age: duration("flush_max_age", text(&o.flush_max_age, &file.flush_max_age, "2m"))?,
            max_unflushed_bytes: size(
                "max_unflushed_size",
                text(&o.max_unflushed_size, &file.max_unflushed_size, "768MiB"),
            )?,
            query_memory_limit: size(
                "query_memory_limit",
                text(&o.query_memory_limit, &file.query_memory_limit, "512MiB"),
            )?,
            query_timeout: duration("query_timeout", text(&o.query_timeout, &file.query_timeout, "60s"))?,
            ingest_inflight_bytes: size(
                "ingest_inflight_limit",
                text(&o.ingest_inflight_limit, &file.ingest_inflight_limit, "256MiB"),
            )?,
            ingest_max_concurrent_requests: o
                .ingest_max_concurrent_requests
                .or(file.ingest_max_concurrent_requests)
                .unwrap_or(64)
                .max(1),
            query_max_concurrent: o.query_max_concurrent.or(file.query_max_concurrent).unwrap_or(32).max(1),
            request_timeout: duration("request_timeout", text(&o.request_timeout, &file.request_timeout, "2m"))?,
            header_read_timeout: match duration(
                "header_read_timeout",
                text(&o.header_read_timeout, &file.header_read_timeout, "30s"),
            )? {
                Duration::ZERO => bail!("--header-read-timeout must be more than 0"),
                d => d,
            },
            sql_max_rows: o.sql_max_rows.or(file.sql_max_rows).unwrap_or(1_000_000),
            sql_max_bytes: size("sql_max_size", text(&o.sql_max_size, &file.sql_max_size, "64MiB"))?,
            limits,
            fsync: o.fsync.or(file.fsync).unwrap_or(true),
            generator,
            generator_settings,
            generators,
            api_keys_file,
            tls_cert_file,
            tls_key_file,
            tls_self_signed,
            cluster_secret,
            internal_tls,
        })
    }
}

/// `--internal-tls-ca-file`, `--internal-tls-cert-file` and `--internal-tls-key-file`: all
/// three or none.
fn internal_tls_files(o: &Options, file: &FileConfig) -> anyhow::Result<Option<InternalTlsFiles>> {
    let ca = o.internal_tls_ca_file.clone().or(file.internal_tls_ca_file.clone());
    let cert = o.internal_tls_cert_file.clone().or(file.internal_tls_cert_file.clone());
    let key = o.internal_tls_key_file.clone().or(file.internal_tls_key_file.clone());
    let server_name = o.internal_tls_server_name.clone().or(file.internal_tls_server_name.clone());
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(InternalTlsFiles { ca, cert, key, server_name })),
        (None, None, None) if server_name.is_none() => Ok(None),
        _ => bail!(
            "--internal-tls-ca-file, --internal-tls-cert-file and --internal-tls-key-file go together \
             (--internal-tls-server-name needs them)"
        ),
    }
}

/// The retention windows: `--retention` (or the file's `retention`) as the default, and the
/// file's per-tenant `tenants.<id>.retention`.
fn retention_policy(o: &Options, file: &FileConfig) -> anyhow::Result<RetentionPolicy> {
    let window = |what: &str, text: &str| parse_std_duration(text).with_context(|| format!("invalid {what} {text:?}"));
    let default = match o.retention.clone().or(file.retention.clone()) {
        Some(t) => Some(window("retention", &t)?),
        None => None,
    };
    let mut tenants = HashMap::new();
    for (tenant, overrides) in file.tenants.iter().flatten() {
        if let Some(t) = &overrides.retention {
            tenants.insert(tenant.clone(), window(&format!("retention of tenant {tenant}"), t)?);
        }
    }
    Ok(RetentionPolicy { default, tenants })
}

/// The file's `limits:` and per-tenant `tenants.<id>.limits:`.
fn file_limits(file: &FileConfig) -> anyhow::Result<LimitsPolicy> {
    limits_policy(file.limits.as_ref(), file.tenants.iter().flatten().map(|(t, o)| (t, o.limits.as_ref())))
}

/// Reads the retention windows and the limits again (the config file may have changed since
/// start).
pub fn reload_policies(o: &Options) -> anyhow::Result<(RetentionPolicy, LimitsPolicy)> {
    let file = match &o.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    Ok((retention_policy(o, &file)?, file_limits(&file)?))
}

/// This host's name (for an advertised address), `localhost` if unknown.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_std_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_std_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_std_duration("soon").is_err());
    }

    #[test]
    fn zipkin_receiver_is_on_by_default_and_off_when_empty() {
        let resolve = |args: &[&str]| {
            let cli = Cli::parse_from([&["spindle"], args].concat());
            Config::resolve(Command::All, &cli.options)
        };
        assert_eq!(resolve(&[]).unwrap().zipkin_addr, Some("127.0.0.1:9411".parse().unwrap()));
        assert!(resolve(&[]).unwrap().zipkin_addr_is_default);
        assert!(!resolve(&["--zipkin-addr", "127.0.0.1:9411"]).unwrap().zipkin_addr_is_default);
        assert_eq!(resolve(&["--zipkin-addr", ""]).unwrap().zipkin_addr, None);
        assert_eq!(
            resolve(&["--zipkin-addr", "127.0.0.1:19411"]).unwrap().zipkin_addr,
            Some("127.0.0.1:19411".parse().unwrap())
        );
        assert!(resolve(&["--zipkin-addr", "nine"]).unwrap_err().to_string().contains("--zipkin-addr"));
        // Beyond loopback it needs API keys like the other receivers.
        assert!(resolve(&["--zipkin-addr", "0.0.0.0:9411"]).unwrap_err().to_string().contains("--api-keys-file"));
    }

    #[test]
    fn precedence() {
        let dir = std::env::temp_dir().join(format!("spindle-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "data_dir: /from/file\nhttp_addr: 127.0.0.1:9999\n").unwrap();
        let cli = Cli::parse_from(["spindle", "--config", path.to_str().unwrap(), "--http-addr", "127.0.0.1:1234"]);
        let c = Config::resolve(Command::All, &cli.options).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.store, StoreLocation::Local(PathBuf::from("/from/file/blocks")));
        assert_eq!(c.http_addr, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(c.otlp_grpc_addr, "127.0.0.1:4317".parse().unwrap());
        assert_eq!((c.shards, c.replication_factor, c.grpc_addr), (1, 1, None));
        // Beyond loopback: API keys, or trusting the tenant header, must be chosen.
        let open = Cli::parse_from(["spindle", "--http-addr", "0.0.0.0:3200"]);
        let e = Config::resolve(Command::All, &open.options).unwrap_err().to_string();
        assert!(e.contains("--api-keys-file") && e.contains("--trust-tenant-header"), "{e}");
        let trusted = Cli::parse_from(["spindle", "--http-addr", "0.0.0.0:3200", "--trust-tenant-header", "true"]);
        assert!(Config::resolve(Command::All, &trusted.options).is_ok());
        let keyed = Cli::parse_from(["spindle", "--otlp-grpc-addr", "0.0.0.0:4317", "--api-keys-file", "/k.yaml"]);
        assert!(Config::resolve(Command::All, &keyed.options).is_ok());
        std::fs::write(&path, "retention: 7d\ntenants:\n  short: { retention: 1h }\n").unwrap();
        let (r, _) = reload_policies(&cli.options).unwrap();
        assert_eq!(r.for_tenant("short"), Some(Duration::from_secs(3600)));
        assert_eq!(r.for_tenant("other"), Some(Duration::from_secs(7 * 86400)));
        std::fs::write(&path, "nonsense_key: 1\n").unwrap();
        assert!(Config::resolve(Command::All, &cli.options).is_err());
    }

    #[test]
    fn role_defaults_and_checks() {
        let cli = Cli::parse_from([
            "spindle",
            "storage",
            "--bootstrap-expect",
            "3",
            "--advertise-addr",
            "n1:7400",
            "--seeds",
            "n1:7400,n2:7400",
        ]);
        let e = Config::resolve(Command::Storage, &cli.options).unwrap_err().to_string();
        assert!(e.contains("--cluster-secret"), "{e}");
        let cli = Cli::parse_from([
            "spindle",
            "storage",
            "--bootstrap-expect",
            "3",
            "--advertise-addr",
            "n1:7400",
            "--seeds",
            "n1:7400,n2:7400",
            "--cluster-secret",
            "0123456789abcdef0123",
        ]);
        let c = Config::resolve(Command::Storage, &cli.options).unwrap();
        assert_eq!((c.shards, c.replication_factor), (8, 3));
        assert_eq!(c.grpc_addr, Some("0.0.0.0:7400".parse().unwrap()));
        assert_eq!(c.seeds, vec!["n1:7400".to_string(), "n2:7400".to_string()]);
        let cli = Cli::parse_from(["spindle", "ingester"]);
        assert!(Config::resolve(Command::Ingester, &cli.options).unwrap_err().to_string().contains("--seeds"));
        let cli = Cli::parse_from(["spindle", "--storage-url", "s3://bucket/spans"]);
        let c = Config::resolve(Command::All, &cli.options).unwrap();
        assert_eq!(c.store, StoreLocation::S3 { bucket: "bucket".into(), prefix: "spans".into() });
        let cli = Cli::parse_from(["spindle", "--storage-url", "ftp://nope"]);
        assert!(Config::resolve(Command::All, &cli.options).is_err());
        let cli = Cli::parse_from(["spindle", "--storage-url", "file:///shared/blocks"]);
        let c = Config::resolve(Command::All, &cli.options).unwrap();
        assert_eq!(c.store, StoreLocation::Local(PathBuf::from("/shared/blocks")));
        assert!(c.compactor);
    }
}
