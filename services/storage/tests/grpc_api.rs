//! The internal storage API over real gRPC: a storage node served by `StorageGrpcServer` on a
//! loopback port, driven by `GrpcStorageClient` exactly as a remote ingester and querier would.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use spindle_storage::TenantId;
use spindle_storage_api::grpc::{GrpcStorageClient, StorageGrpcServer};
use spindle_storage_api::{ApiError, ReadRequest, StorageApi};
use spindle_storage_node::{NodeConfig, ShardConfig, StorageMetrics, StorageNode};

fn batch(trace: u8, spans: u8) -> arrow::array::RecordBatch {
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
    spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch
}

#[tokio::test]
async fn push_read_and_flush_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let store = spindle_storage::store::local_store(&dir.path().join("blocks")).unwrap();
    let config = NodeConfig { node_id: 1, dir: dir.path().join("raft"), shards: vec![0], shard: ShardConfig::default() };
    let node = Arc::new(StorageNode::open(config, store, StorageMetrics::default()).await.unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StorageGrpcServer::service(node.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let client = GrpcStorageClient::new(channel);
    let tenant = TenantId::new("acme").unwrap();

    assert_eq!(client.push(0, &tenant, batch(7, 3)).await.unwrap(), 3);
    assert_eq!(client.push(0, &tenant, batch(8, 2)).await.unwrap(), 2);

    let all = ReadRequest { tenant: tenant.clone(), shards: vec![0], time_range: None, trace_id: None };
    let read = client.read_unflushed(&all).await.unwrap();
    assert_eq!(read[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    let one = ReadRequest { trace_id: Some([8; 16]), ..all.clone() };
    let read = client.read_unflushed(&one).await.unwrap();
    assert_eq!(read[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    // After a flush the spans are in a committed block, not in memory.
    assert_eq!(node.flush_all().await.unwrap(), 1);
    let read = client.read_unflushed(&all).await.unwrap();
    assert_eq!(read[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    assert_eq!(read[0].blocks.len(), 1);
    assert_eq!(read[0].blocks[0].rows, 5);

    // Errors keep their meaning across the wire.
    match client.push(9, &tenant, batch(1, 1)).await {
        Err(ApiError::Unavailable(m)) => assert!(m.contains("shard 9")),
        other => panic!("expected unavailable, got {other:?}"),
    }
    server.abort();
    node.shutdown().await.unwrap();
}
