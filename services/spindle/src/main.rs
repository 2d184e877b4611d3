//! `spindle`: starts the roles (all in one process by default) and wires them together.

mod config;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use prometheus_client::registry::Registry;
use spindle_ingester::grpc::{map_codec_errors, OtlpGrpc};
use spindle_ingester::{IngestMetrics, Ingester, IngesterConfig};
use spindle_querier::{Querier, QueryMetrics};
use spindle_query::{QueryConfig, QueryEngine, SpanSource};
use spindle_ring::Ring;
use spindle_storage_api::StorageApi;
use spindle_storage_node::{NodeConfig, ShardConfig, StorageMetrics, StorageNode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Cli, Command, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::resolve(&cli.options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindle: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spindle: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::All) {
        Command::All => runtime.block_on(run_all(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spindle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs ingester, storage node and querier in this process, talking through the same
/// `StorageApi` trait the cluster uses over gRPC.
async fn run_all(config: Config) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = spindle_storage::store::local_store(&config.data_dir.join("blocks")).context("opening the block store")?;

    // Bind first so a busy port is reported before any work starts.
    let http_listener = bind(config.http_addr, "HTTP API").await?;
    let otlp_http_listener = bind(config.otlp_http_addr, "OTLP/HTTP").await?;
    let otlp_grpc_listener = bind(config.otlp_grpc_addr, "OTLP/gRPC").await?;

    let shard = ShardConfig {
        flush_max_bytes: config.flush_max_bytes,
        flush_max_age: config.flush_max_age,
        max_unflushed_bytes: config.max_unflushed_bytes,
        fsync: config.fsync,
        ..ShardConfig::default()
    };
    let node_config = NodeConfig { node_id: 1, dir: config.data_dir.join("raft"), shards: vec![0], shard };
    let node = Arc::new(
        StorageNode::open(node_config, store.clone(), StorageMetrics::register(&mut registry))
            .await
            .context("opening the storage node")?,
    );
    let storage: Arc<dyn StorageApi> = node.clone();
    let ring = Ring::single();

    let ingester = Arc::new(Ingester::new(
        ring.clone(),
        storage.clone(),
        IngesterConfig { max_request_bytes: config.max_request_bytes, ..IngesterConfig::default() },
        IngestMetrics::register(&mut registry),
    ));
    let source = Arc::new(SpanSource::new(storage, ring, store));
    let engine = Arc::new(
        QueryEngine::new(source, QueryConfig { memory_limit: config.query_memory_limit, ..QueryConfig::default() })
            .context("starting the query engine")?,
    );
    let querier = Querier::new(engine, QueryMetrics::register(&mut registry));
    let registry = Arc::new(registry);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing requests, then flushing");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let api = spindle_querier::router(querier).merge(ops_routes(registry));
    let api_server = axum::serve(http_listener, api).with_graceful_shutdown(stopped(stop_rx.clone()));
    let otlp_http_server = axum::serve(otlp_http_listener, spindle_ingester::http::router(ingester.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let otlp_grpc_server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(map_codec_errors::<tonic::body::Body>))
        .add_service(OtlpGrpc::service(ingester))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(otlp_grpc_listener),
            stopped(stop_rx.clone()),
        );
    tracing::info!(
        http = %config.http_addr,
        otlp_grpc = %config.otlp_grpc_addr,
        otlp_http = %config.otlp_http_addr,
        data_dir = %config.data_dir.display(),
        "spindle is ready"
    );
    let (a, b, c) = tokio::join!(api_server, otlp_http_server, otlp_grpc_server);
    let served = a.context("HTTP API").and(b.context("OTLP/HTTP")).and(c.context("OTLP/gRPC"));
    node.shutdown().await.context("flushing the storage node")?;
    tracing::info!("stopped cleanly");
    served
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `/metrics`, `/live`, `/ready`.
fn ops_routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
                        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        )
        .route("/live", get(|| async { "live" }))
        .route("/ready", get(|| async { "ready" }))
}
