//! Blocks on a one-node cluster: a flush names its block after the shard and log range and lists
//! it in the tenant's index; the leader's sweep deletes block files that were never committed
//! and never can be (once older than the grace period) and keeps committed ones, ranges that may
//! still commit, and foreign files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use spindle_cluster_client::Channels;
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::index::{index_path, read_index};
use spindle_storage::{block_dir, TenantId};
use spindle_storage_api::StorageApi;
use spindle_storage_node::{NodeConfig, ShardConfig, StorageMetrics, StorageNode};

fn batch(trace: u8) -> EncodedBatch {
    let span = Span {
        trace_id: vec![trace; 16],
        span_id: vec![1; 8],
        name: "s".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        ..Default::default()
    };
    let rs = ResourceSpans {
        scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
        ..Default::default()
    };
    EncodedBatch::encode(spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch).unwrap()
}

async fn start(dir: &std::path::Path, store: Arc<dyn ObjectStore>, grace: Duration) -> Arc<StorageNode> {
    let config = NodeConfig {
        node_id: 1,
        advertise_addr: "in-process".into(),
        dir: dir.join("raft"),
        seeds: Vec::new(),
        bootstrap: Default::default(),
        shard: ShardConfig { orphan_grace: grace, sweep_interval: Duration::from_secs(3600), ..ShardConfig::default() },
    };
    let node = StorageNode::start(config, store, Channels::default(), StorageMetrics::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.ready().is_err() {
        assert!(Instant::now() < deadline, "{:?}", node.ready());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

async fn exists(store: &dyn ObjectStore, path: &Path) -> bool {
    store.head(path).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_blocks_are_named_by_log_range_and_orphans_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = spindle_storage::store::local_store(&dir.path().join("blocks")).unwrap();
    let node = start(dir.path(), store.clone(), Duration::ZERO).await;
    let cluster = node.state().cluster_id.clone();
    let tenant = TenantId::new("acme").unwrap();
    node.push(0, &tenant, batch(1)).await.unwrap();
    node.push(0, &tenant, batch(2)).await.unwrap();
    assert_eq!(node.flush_all().await.unwrap(), 1);

    let index = read_index(store.as_ref(), &index_path(&tenant, &cluster, 0)).await.unwrap();
    assert_eq!(index.len(), 1);
    let block = &index[0];
    assert!(block.trace_bloom.is_some(), "the index keeps the Bloom filter");
    assert_eq!(
        block.path,
        format!("acme/blocks/{cluster}/shard-00000/{:020}-{:020}.parquet", block.first_index, block.last_index)
    );
    assert!(block.first_index >= 1 && block.last_index > block.first_index);

    // A block of a flush that lost the race for its range (it can never commit now), one of a
    // range past the flushed one (a commit may still be on its way), and a file that is not a
    // block.
    let dir_path = block_dir(&tenant, &cluster, 0);
    let orphan = Path::from(format!("{dir_path}/{:020}-{:020}.parquet", 1, block.last_index - 1));
    let pending = Path::from(format!("{dir_path}/{:020}-{:020}.parquet", block.last_index + 1, block.last_index + 9));
    let foreign = Path::from(format!("{dir_path}/README"));
    for path in [&orphan, &pending, &foreign] {
        store.put(path, PutPayload::from_static(b"not a committed block")).await.unwrap();
    }

    let shard = node.shard(0).unwrap();
    assert_eq!(shard.sweep_orphans().await.unwrap(), 1);
    assert!(!exists(store.as_ref(), &orphan).await, "the orphan is deleted");
    assert!(exists(store.as_ref(), &pending).await, "a range that may still commit is kept");
    assert!(exists(store.as_ref(), &foreign).await, "files that are not blocks are left alone");
    assert!(exists(store.as_ref(), &Path::from(block.path.as_str())).await, "the committed block stays");
    node.shutdown().await.unwrap();

    // Within the grace period an uncommitted file may still be committed: it stays.
    let node = start(dir.path(), store.clone(), Duration::from_secs(3600)).await;
    store.put(&orphan, PutPayload::from_static(b"in flight")).await.unwrap();
    assert_eq!(node.shard(0).unwrap().sweep_orphans().await.unwrap(), 0);
    assert!(exists(store.as_ref(), &orphan).await);
    node.shutdown().await.unwrap();
}
