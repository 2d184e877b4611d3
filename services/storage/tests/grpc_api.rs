//! Three storage nodes in this process, talking real gRPC on loopback: they create a cluster
//! (metadata group with three voters, two shards replicated three ways), a `ShardRouter`
//! that only knows one seed finds every shard's leader, pushes are committed and read back
//! (streamed, filtered, projected), a retried push is stored once, and a flush moves the spans
//! into a block named after its log range that every replica lists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use spindle_cluster::ClusterConfig;
use spindle_cluster_client::watch::TopologyWatch;
use spindle_cluster_client::{Channels, RouterConfig, ShardRouter};
use spindle_schema::digest::{self, PushPart};
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::TenantId;
use spindle_storage_api::grpc::StorageGrpcServer;
use spindle_storage_api::{ApiError, Push, ShardReadRequest};
use spindle_storage_node::network::RaftService;
use spindle_storage_node::service::ClusterService;
use spindle_storage_node::{BootstrapConfig, NodeConfig, ShardConfig, StorageMetrics, StorageNode};
use tokio::net::TcpListener;

fn batch(trace: u8, spans: u8) -> EncodedBatch {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: vec![trace; 16],
            span_id: vec![i + 1; 8],
            name: format!("span-{i}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_100_000_000,
            ..Default::default()
        })
        .collect();
    let rs = ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() };
    EncodedBatch::encode(spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch).unwrap()
}

struct TestNode {
    node: Arc<StorageNode>,
    server: tokio::task::JoinHandle<()>,
}

async fn start_cluster(dir: &std::path::Path) -> (Vec<TestNode>, Vec<String>) {
    let store = spindle_storage::store::local_store(&dir.join("blocks")).unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(l);
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = NodeConfig {
            node_id: i as u64 + 1,
            advertise_addr: addrs[i].clone(),
            dir: dir.join(format!("node-{i}")),
            seeds: addrs.clone(),
            bootstrap: BootstrapConfig {
                expect: 3,
                shards: 2,
                cluster: ClusterConfig { replication_factor: 3, ..ClusterConfig::default() },
            },
            shard: ShardConfig::default(),
        };
        let node =
            StorageNode::start(config, store.clone(), Channels::default(), StorageMetrics::default()).await.unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(StorageGrpcServer::service(node.clone()))
            .add_service(ClusterService::service(node.clone()))
            .add_service(RaftService::service(node.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        nodes.push(TestNode { node, server });
    }
    (nodes, addrs)
}

async fn wait_ready(nodes: &[TestNode]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: Vec<String> = nodes.iter().filter_map(|n| n.node.ready().err()).collect();
        if waiting.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "cluster not ready: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn unflushed_rows(router: &ShardRouter, request: ShardReadRequest) -> (usize, usize) {
    let read = router.read(request).await.unwrap();
    let batches: Vec<_> = read.batches.try_collect().await.unwrap();
    (batches.iter().map(|b| b.num_rows()).sum(), read.blocks.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_route_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_cluster(dir.path()).await;
    wait_ready(&nodes).await;
    let state = nodes[0].node.state();
    assert_eq!(state.shards.len(), 2);
    assert!(state.shards.values().all(|s| s.replicas == vec![1, 2, 3] && s.initialized));
    let voters: Vec<u64> =
        nodes[0].node.meta_raft().metrics().borrow().membership_config.membership().voter_ids().collect();
    assert_eq!(voters, vec![1, 2, 3]);

    // A router that knows one seed, as an ingester or querier would.
    let topology = TopologyWatch::remote(vec![addrs[2].clone()], Channels::default(), Duration::from_millis(200));
    let router = ShardRouter::new(topology.clone(), None, Channels::default(), RouterConfig::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology.current().shard_ids().len() != 2 {
        assert!(Instant::now() < deadline, "router never got the topology");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tenant = TenantId::new("acme").unwrap();
    assert_eq!(router.push(0, &tenant, batch(7, 3)).await.unwrap(), 3);
    assert_eq!(router.push(0, &tenant, batch(8, 2)).await.unwrap(), 2);
    assert_eq!(router.push(1, &tenant, batch(9, 4)).await.unwrap(), 4);
    // The same batch again (a client retry after an unknown outcome) is acknowledged, not stored.
    assert_eq!(router.push(0, &tenant, batch(8, 2)).await.unwrap(), 2);

    // Pushes holding several exports (an ingester sends concurrent exports together): each
    // export is recognised on its own when it comes again, whatever it travels with.
    let export = |trace: u8, spans: u8| batch(trace, spans).batch().clone();
    let push = |exports: &[RecordBatch]| {
        let merged = arrow::compute::concat_batches(exports[0].schema_ref(), exports).unwrap();
        let parts = exports
            .iter()
            .map(|b| PushPart { digest: digest::of_rows("acme", b), rows: b.num_rows() as u32 })
            .collect();
        Push { shard: 0, tenant: tenant.clone(), batch: EncodedBatch::encode(merged).unwrap(), parts }
    };
    let (a, b, c) = (export(10, 2), export(11, 3), export(12, 1));
    assert_eq!(router.push_one(push(&[a.clone(), b.clone()])).await.unwrap(), 5);
    // b again with a new export c: both acknowledged, only c stored.
    assert_eq!(router.push_one(push(&[b.clone(), c.clone()])).await.unwrap(), 4);
    // a alone again, and the three together: nothing new.
    assert_eq!(router.push_one(push(std::slice::from_ref(&a))).await.unwrap(), 2);
    assert_eq!(router.push_one(push(&[c.clone(), a.clone(), b.clone()])).await.unwrap(), 6);
    // Parts that do not add up to the batch are refused.
    let mut bad = push(&[export(13, 2), export(14, 2)]);
    bad.parts[1].rows = 1;
    assert!(matches!(router.push_one(bad).await, Err(ApiError::InvalidArgument(_))));
    // ... and so are parts without rows (a flood of them would fill the retry window).
    let mut empty = push(&[export(15, 2)]);
    empty.parts.push(PushPart { digest: [1, 2], rows: 0 });
    assert!(matches!(router.push_one(empty).await, Err(ApiError::InvalidArgument(_))));

    let all =
        ShardReadRequest { tenant: tenant.clone(), shard: 0, time_range: None, trace_ids: None, projection: None };
    assert_eq!(unflushed_rows(&router, all.clone()).await, (11, 0));
    for (trace, rows) in [(10, 2), (11, 3), (12, 1)] {
        let one = ShardReadRequest { trace_ids: Some(vec![[trace; 16]]), ..all.clone() };
        assert_eq!(unflushed_rows(&router, one).await.0, rows, "trace {trace} stored once");
    }
    let one = ShardReadRequest { trace_ids: Some(vec![[8; 16]]), projection: Some(vec![0, 1]), ..all.clone() };
    let read = router.read(one).await.unwrap();
    let batches: Vec<_> = read.batches.try_collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert!(batches.iter().all(|b| b.num_columns() == 2));

    // Every replica holds the same spans; only the leader flushes, and every replica learns the block.
    let mut flushed = 0;
    for n in &nodes {
        flushed += n.node.flush_all().await.unwrap();
    }
    assert_eq!(flushed, 2, "one block per shard");
    assert_eq!(unflushed_rows(&router, all.clone()).await, (0, 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocks: Vec<usize> = nodes.iter().map(|n| n.node.shard(0).unwrap().usage().1).collect();
        if blocks == vec![1, 1, 1] {
            break;
        }
        assert!(Instant::now() < deadline, "followers did not apply the flush: {blocks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = router.read(all.clone()).await.unwrap();
    assert_eq!(read.blocks[0].rows, 11);
    assert!(
        read.blocks[0].path.contains(&format!("/blocks/{}/shard-00000/", state.cluster_id)),
        "{}",
        read.blocks[0].path
    );

    // A shard nobody hosts: the router retries until its deadline, then says unavailable.
    let quick = ShardRouter::new(
        topology.clone(),
        None,
        Channels::default(),
        RouterConfig { write_deadline: Duration::from_millis(300), ..RouterConfig::default() },
    );
    match quick.push(9, &tenant, batch(1, 1)).await {
        Err(ApiError::Unavailable(m)) => assert!(m.contains("shard 9"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }

    for n in &nodes {
        n.node.shutdown().await.unwrap();
        n.server.abort();
    }
}
