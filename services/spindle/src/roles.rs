//! Wiring of each role. `all` is a one-node cluster in one process; the other roles run one
//! part each and reach the rest over the internal gRPC API.
//!
//! | role | serves |
//! |---|---|
//! | `all` | OTLP, Tempo API + SQL, `/admin`, ops; a storage node with no internal listener |
//! | `storage` | internal gRPC (push, read, metadata, Raft), `/admin`, ops |
//! | `ingester` | OTLP, ops |
//! | `querier` | Tempo API + SQL, ops |
//! | `compactor` | ops (merges blocks in the background) |
//! | `generator` | internal gRPC (spans from ingesters), `/api/generator/metrics`, ops |
//!
//! `all` runs the metrics generator too (unless `--generator false`); ingesters tee to it in
//! process, or to the `--generators` over gRPC.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use spindle_auth::cluster::RequireClusterSecret;
use spindle_auth::http::protect;
use spindle_auth::{Access, Auth};
use spindle_cluster::ClusterConfig;
use spindle_cluster_client::watch::TopologyWatch;
use spindle_cluster_client::{RouterConfig, ShardRouter};
use spindle_compactor::{Compactor, CompactorConfig, CompactorMetrics};
use spindle_generator::service::GeneratorGrpc;
use spindle_generator::tee::{LocalTee, RemoteTee};
use spindle_generator::{Generator, GeneratorMetrics};
use spindle_ingester::grpc::{busy_response, map_codec_errors, OtlpGrpc};
use spindle_ingester::{IngestMetrics, Ingester, IngesterConfig};
use spindle_limits::shed::ShedLayer;
use spindle_limits::LimitsTable;
use spindle_querier::{Admission, Querier, QueryMetrics, SqlLimits};
use spindle_query::{QueryConfig, QueryEngine, SpanSource};
use spindle_storage::cache::{CacheOptions, CachedStore};
use spindle_storage::instrumented::{InstrumentedStore, ObjectStoreMetrics};
use spindle_storage::store::open_store;
use spindle_storage::Retention;
use spindle_storage_api::grpc::StorageGrpcServer;
use spindle_storage_api::StorageApi;
use spindle_storage_node::network::RaftService;
use spindle_storage_node::raft_log::LogOptions;
use spindle_storage_node::service::ClusterService;
use spindle_storage_node::{BootstrapConfig, NodeConfig, ShardConfig, StorageMetrics, StorageNode};
use spindle_tls::{Incoming, ServerConfig, ServerTls};
use spindle_types::SpanTee;
use tokio::sync::watch;

use crate::config::{reload_policies, Command, Config, Options};
use crate::listeners::{bind, channels, cluster_tls, grpc_server, serve_http, stopped, Server};
use crate::ops::{self, Readiness};

/// How long a querier may go without reaching the metadata and still call itself ready.
const METADATA_FRESHNESS: Duration = Duration::from_secs(10);

fn node_config(config: &Config, retention: &Retention) -> NodeConfig {
    NodeConfig {
        node_id: config.node_id,
        advertise_addr: config.advertise_addr.clone(),
        dir: config.data_dir.join("raft"),
        seeds: config.seeds.clone(),
        bootstrap: BootstrapConfig {
            expect: config.bootstrap_expect,
            shards: config.shards,
            cluster: ClusterConfig {
                replication_factor: config.replication_factor,
                shards_per_tenant: config.shards_per_tenant,
                ..ClusterConfig::default()
            },
        },
        shard: ShardConfig {
            delete_grace: config.block_delete_grace,
            lifecycle_interval: config.retention_interval,
            retention: retention.clone(),
            flush_max_bytes: config.flush_max_bytes,
            flush_max_age: config.flush_max_age,
            max_unflushed_bytes: config.max_unflushed_bytes,
            log: LogOptions { fsync: config.fsync, ..LogOptions::default() },
            ..ShardConfig::default()
        },
    }
}

/// Runs `role` until SIGTERM or Ctrl-C, then stops cleanly: external listeners first, then the
/// storage node (which flushes what it leads), then the internal listener it needed for that.
pub async fn run(role: Command, config: Config) -> anyhow::Result<()> {
    let stores = matches!(role, Command::All | Command::Storage);
    let ingests = matches!(role, Command::All | Command::Ingester);
    let queries = matches!(role, Command::All | Command::Querier);
    let compacts = config.compactor;
    let generates = config.generator;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
    let cluster_tls = cluster_tls(&config)?;
    let channels = channels(&config, cluster_tls.clone())?;

    // Bind first so a busy port is reported before any work starts.
    let http_listener = bind(config.http_addr, "the HTTP API").await?;
    let otlp_listeners = if ingests {
        Some((bind(config.otlp_grpc_addr, "OTLP/gRPC").await?, bind(config.otlp_http_addr, "OTLP/HTTP").await?))
    } else {
        None
    };
    let zipkin_listener = match config.zipkin_addr.filter(|_| ingests) {
        Some(addr) => match bind(addr, "the Zipkin receiver (--zipkin-addr; empty turns it off)").await {
            Ok(listener) => Some(listener),
            // Only the default address: another Zipkin server on this host must not stop Spindle.
            Err(e) if config.zipkin_addr_is_default => {
                tracing::warn!(error = format!("{e:#}"), "the Zipkin receiver is off: its default port is taken");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let grpc_listener = match config.grpc_addr.filter(|_| stores || role == Command::Generator) {
        Some(addr) => Some(bind(addr, "the internal gRPC API").await?),
        None => None,
    };
    let store = if stores || queries || compacts || generates {
        if stores {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        }
        let store = open_store(&config.store, &config.store_options)
            .with_context(|| format!("opening the block store {}", config.store.describe()))?;
        let store = InstrumentedStore::wrap(store, ObjectStoreMetrics::register(&mut registry));
        Some(store)
    } else {
        None
    };
    let retention = Retention::new(config.retention.clone());
    let limits = LimitsTable::new(config.limits.clone());
    tokio::spawn(reload_policies_on_change(
        config.options.clone(),
        retention.clone(),
        limits.clone(),
        config.retention_interval,
    ));

    let node = match (&store, stores) {
        (Some(store), true) => Some(
            StorageNode::start(
                node_config(&config, &retention),
                store.clone(),
                channels.clone(),
                StorageMetrics::register(&mut registry),
            )
            .await
            .context("starting the storage node")?,
        ),
        _ => None,
    };
    let topology = match &node {
        Some(n) => TopologyWatch::local(n.topology()),
        None => TopologyWatch::remote(config.seeds.clone(), channels.clone(), Duration::from_secs(1)),
    };
    let local = node.as_ref().map(|n| (n.id(), n.clone() as Arc<dyn StorageApi>));
    let router_config = RouterConfig { write_deadline: config.write_timeout, ..RouterConfig::default() };
    let router = Arc::new(ShardRouter::new(topology.clone(), local, channels.clone(), router_config));

    let auth = match &config.api_keys_file {
        Some(path) => Auth::with_keys_file(path).context("loading API keys")?,
        None => Auth::trust_header(),
    };
    tokio::spawn(auth.clone().reload_on_change(Duration::from_secs(5)));
    let generator_metrics =
        (generates || !config.generators.is_empty()).then(|| GeneratorMetrics::register(&mut registry));
    let generator = match (&generator_metrics, generates) {
        (Some(metrics), true) => Some(
            Generator::new(config.generator_settings.clone(), store.clone(), Some(retention.clone()), metrics.clone())
                .context("starting the metrics generator")?,
        ),
        _ => None,
    };
    let local_tee = generator.as_ref().map(|g| LocalTee::start(g.clone()));
    let tee: Option<Arc<dyn SpanTee>> = match (&local_tee, &generator_metrics) {
        (Some(local), _) if role == Command::All => Some(local.clone()),
        (_, Some(metrics)) if ingests && !config.generators.is_empty() => Some(
            RemoteTee::new(&config.generators, &channels, config.generator_settings.max_queue_bytes, metrics.clone())
                .context("invalid --generators address")?,
        ),
        _ => None,
    };
    let ingester = ingests.then(|| {
        let ingester = Ingester::new(
            router.clone(),
            IngesterConfig {
                max_request_bytes: config.max_request_bytes,
                max_inflight_bytes: config.ingest_inflight_bytes,
                max_concurrent_requests: config.ingest_max_concurrent_requests,
                request_timeout: config.request_timeout,
                ..IngesterConfig::default()
            },
            IngestMetrics::register(&mut registry),
        );
        let ingester = ingester.with_auth(auth.clone()).with_limits(limits.clone());
        Arc::new(match &tee {
            Some(tee) => ingester.with_tee(tee.clone()),
            None => ingester,
        })
    });
    let querier = match (&store, queries) {
        (Some(store), true) => {
            // Blocks never change once written: the querier reads them through a cache.
            let cache = CacheOptions {
                memory_bytes: config.memory_cache_bytes as u64 / 2,
                disk_dir: config.cache_dir.clone(),
                disk_bytes: config.cache_bytes,
            };
            let cached = CachedStore::new(store.clone(), &cache).context("preparing the block cache")?;
            let source = Arc::new(SpanSource::new(router.clone(), Arc::new(cached)));
            let engine = QueryEngine::new(
                source,
                QueryConfig {
                    memory_limit: config.query_memory_limit,
                    timeout: config.query_timeout,
                    metadata_cache_bytes: config.memory_cache_bytes / 2,
                    ..QueryConfig::default()
                },
            )
            .context("starting the query engine")?;
            let querier = Querier::new(Arc::new(engine), QueryMetrics::register(&mut registry))
                .with_limits(limits.clone())
                .with_sql_limits(SqlLimits { max_rows: config.sql_max_rows, max_bytes: config.sql_max_bytes })
                .with_admission(Admission {
                    max_concurrent: config.query_max_concurrent,
                    timeout: config.request_timeout,
                })
                .with_mcp_any_host(!config.http_addr.ip().is_loopback());
            Some(querier)
        }
        _ => None,
    };

    let compactor = match (&store, compacts) {
        (Some(store), true) => Some(Arc::new(Compactor::new(
            router.clone(),
            store.clone(),
            CompactorConfig {
                target_bytes: config.compaction_target_bytes,
                window: config.compaction_window,
                interval: config.compaction_interval,
                lease: config.compaction_lease,
                ..CompactorConfig::default()
            },
            CompactorMetrics::register(&mut registry),
        ))),
        _ => None,
    };

    let ready: Readiness = match (&node, &ingester) {
        (Some(node), _) => {
            let node = node.clone();
            Arc::new(move || node.ready())
        }
        (None, Some(ingester)) => {
            let ingester = ingester.clone();
            Arc::new(move || {
                if ingester.has_topology() {
                    Ok(())
                } else {
                    Err("no topology from the storage nodes yet".into())
                }
            })
        }
        (None, None) if role == Command::Generator => Arc::new(|| Ok(())),
        (None, None) => {
            let topology = topology.clone();
            Arc::new(move || {
                let fresh = topology.is_fresh(METADATA_FRESHNESS) && topology.current().state.is_bootstrapped();
                if fresh {
                    Ok(())
                } else {
                    Err("cannot reach the cluster metadata".into())
                }
            })
        }
    };

    let mut http = ops::routes(Arc::new(registry), ready);
    if let Some(q) = querier {
        http = http.merge(protect(spindle_querier::router(q), auth.clone(), Access::Read));
    }
    if let Some(n) = &node {
        http = http.merge(protect(spindle_storage_node::admin::routes(n.clone()), auth.clone(), Access::Admin));
    }
    if let Some(g) = &generator {
        http = http.merge(protect(spindle_generator::service::routes(g.clone()), auth.clone(), Access::Read));
    }

    let (stop_external, external) = watch::channel(false);
    let (stop_internal, internal) = watch::channel(false);
    let tls = external_tls(&config)?.map(|t| t.server_config()).transpose().context("TLS")?;
    let incoming = |listener, tls: Option<&Arc<ServerConfig>>, what: &str| {
        Incoming::new(listener, tls.cloned(), config.header_read_timeout).with_context(|| format!("{what} listener"))
    };
    let mut servers: Vec<Server> = vec![serve_http(
        incoming(http_listener, tls.as_ref(), "HTTP API")?,
        http,
        external.clone(),
        config.header_read_timeout,
    )];
    if let (Some((grpc, http)), Some(ingester)) = (otlp_listeners, &ingester) {
        servers.push(serve_http(
            incoming(http, tls.as_ref(), "OTLP/HTTP")?,
            spindle_ingester::http::router(ingester.clone()),
            external.clone(),
            config.header_read_timeout,
        ));
        let otlp = grpc_server()
            .timeout(config.request_timeout)
            .layer(tower::util::MapResponseLayer::new(map_codec_errors::<tonic::body::Body>))
            .layer(ShedLayer::new(
                config.ingest_max_concurrent_requests,
                busy_response::<tonic::body::Body>(ingester.metrics().clone()),
            ))
            .add_service(OtlpGrpc::service(ingester.clone()))
            .serve_with_incoming_shutdown(
                incoming(grpc, tls.as_ref(), "OTLP/gRPC")?.into_stream(),
                stopped(external.clone()),
            );
        servers.push(Box::pin(async move { otlp.await.context("OTLP/gRPC") }));
    }
    if let (Some(listener), Some(ingester)) = (zipkin_listener, &ingester) {
        servers.push(serve_http(
            incoming(listener, tls.as_ref(), "Zipkin")?,
            spindle_ingester::zipkin::router(ingester.clone()),
            external.clone(),
            config.header_read_timeout,
        ));
    }
    let internal_tls = cluster_tls.as_ref().map(|t| t.server_config()).transpose().context("internal TLS")?;
    let secret = || tower::util::option_layer(config.cluster_secret.as_deref().map(RequireClusterSecret::new));
    let internal_server = match (grpc_listener, &node, &local_tee) {
        (Some(listener), None, Some(tee)) => {
            let server = grpc_server()
                .layer(secret())
                .add_service(GeneratorGrpc::service(tee.clone()))
                .serve_with_incoming_shutdown(
                    incoming(listener, internal_tls.as_ref(), "internal gRPC")?.into_stream(),
                    stopped(external.clone()),
                );
            Some(tokio::spawn(async move { server.await.context("internal gRPC API") }))
        }
        (Some(listener), Some(node), _) => {
            let server = grpc_server()
                .layer(secret())
                .add_service(StorageGrpcServer::service(node.clone()))
                .add_service(ClusterService::service(node.clone()))
                .add_service(RaftService::service(node.clone()))
                .serve_with_incoming_shutdown(
                    incoming(listener, internal_tls.as_ref(), "internal gRPC")?.into_stream(),
                    stopped(internal),
                );
            Some(tokio::spawn(async move { server.await.context("internal gRPC API") }))
        }
        _ => None,
    };

    if let Some(c) = compactor {
        tokio::spawn(c.run(external.clone()));
    }
    // The generator collects until the external listeners stop, then writes what it holds.
    let generator_task = generator.map(|g| tokio::spawn(g.run(external.clone())));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing requests, then flushing");
        let _ = stop_external.send(true);
    });
    tracing::info!(
        role = role.name(),
        http = %config.http_addr,
        otlp_grpc = ?ingests.then_some(config.otlp_grpc_addr),
        otlp_http = ?ingests.then_some(config.otlp_http_addr),
        zipkin = ?config.zipkin_addr.filter(|_| ingests),
        internal_grpc = %config.grpc_addr.filter(|_| stores || role == Command::Generator).map(|a| a.to_string()).unwrap_or_default(),
        node_id = %node.as_ref().map(|n| n.id().to_string()).unwrap_or_default(),
        data_dir = %config.data_dir.display(),
        "spindle is running"
    );
    let served = futures::future::join_all(servers).await.into_iter().collect::<anyhow::Result<Vec<()>>>();
    if let Some(task) = generator_task {
        task.await.context("metrics generator task")?;
    }
    if let Some(node) = node {
        node.shutdown().await.context("stopping the storage node")?;
    }
    let _ = stop_internal.send(true);
    if let Some(server) = internal_server {
        server.await.context("internal gRPC API task")??;
    }
    tracing::info!("stopped cleanly");
    served.map(|_| ())
}

/// Re-reads the retention windows and the limits whenever the config file changes (checked
/// every `every`); a file that does not parse leaves the current ones in force.
async fn reload_policies_on_change(options: Options, retention: Retention, limits: LimitsTable, every: Duration) {
    let Some(path) = options.config.clone() else { return };
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::time::sleep(every).await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match reload_policies(&options) {
            Ok((policy, new_limits)) => {
                if retention.set(policy.clone()) {
                    tracing::info!(default = ?policy.default, tenants = policy.tenants.len(), "retention reloaded");
                }
                let tenants = new_limits.tenants.len();
                if limits.set(new_limits) {
                    tracing::info!(tenants, "limits reloaded");
                }
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "config file not reloaded; keeping the current retention and limits"
            ),
        }
    }
}

/// The certificate of the HTTP API and the OTLP receivers: from files (reloaded when they
/// change), self-signed for development, or none.
fn external_tls(config: &Config) -> anyhow::Result<Option<Arc<ServerTls>>> {
    Ok(match (&config.tls_cert_file, &config.tls_key_file, config.tls_self_signed) {
        (Some(cert), Some(key), _) => {
            let tls = ServerTls::from_files(cert, key).context("loading the TLS certificate")?;
            tokio::spawn(tls.clone().reload_on_change(Duration::from_secs(10)));
            Some(tls)
        }
        (_, _, true) => {
            let dir = config.data_dir.join("tls");
            let tls = ServerTls::self_signed(&dir, std::slice::from_ref(&config.advertise_addr))
                .context("making a self-signed TLS certificate")?;
            tracing::warn!(cert = %dir.join("cert.pem").display(), "TLS with a self-signed certificate (development only): clients must trust this file");
            Some(tls)
        }
        _ => None,
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
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
