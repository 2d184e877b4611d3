//! How ingesters hand spans to the generator without ever waiting for it: [`LocalTee`] queues
//! to the generator in the same process, [`RemoteTee`] sends each generator the traces it owns
//! (rendezvous hashing of the trace id over the generators' addresses, `spindle_ring::rendezvous`). Both are bounded by
//! bytes: what does not fit is dropped and counted in `spindle_generator_dropped_spans_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use bytes::Bytes;
use spindle_cluster_client::{Channels, InternalChannel};
use spindle_proto::generator::generator_client::GeneratorClient;
use spindle_proto::generator::PushSpans;
use spindle_schema::col;
use spindle_storage::TenantId;
use spindle_types::SpanTee;
use tokio::sync::mpsc;

use crate::{Generator, GeneratorMetrics};

/// How long one push to a generator may take before it is given up (and its spans counted).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes queued but not yet processed, with a ceiling.
#[derive(Debug, Clone)]
struct ByteBudget {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl ByteBudget {
    fn new(max: usize) -> Self {
        Self { used: Arc::new(AtomicUsize::new(0)), max }
    }

    fn try_take(&self, n: usize) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + n <= self.max).then_some(u + n)).is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

struct Item {
    tenant: TenantId,
    batch: RecordBatch,
    sizes: Vec<u32>,
    bytes: usize,
}

/// Queues batches to a generator in this process, processed by one background task.
pub struct LocalTee {
    tx: mpsc::Sender<Item>,
    budget: ByteBudget,
    metrics: GeneratorMetrics,
}

impl LocalTee {
    /// Starts the task that feeds `generator`.
    pub fn start(generator: Arc<Generator>) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Item>(4096);
        let budget = ByteBudget::new(generator.settings().max_queue_bytes);
        let worker_budget = budget.clone();
        let metrics = generator.metrics().clone();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                generator.consume(&item.tenant, &item.batch, &item.sizes);
                worker_budget.give_back(item.bytes);
            }
        });
        Arc::new(Self { tx, budget, metrics })
    }

    /// Queues a batch; false (and counted) when the queue is full.
    pub fn try_offer(&self, tenant: &TenantId, batch: RecordBatch, sizes: Vec<u32>) -> bool {
        let rows = batch.num_rows() as u64;
        let bytes = batch.get_array_memory_size();
        if !self.budget.try_take(bytes) {
            self.metrics.dropped("queue_full", rows);
            return false;
        }
        if self.tx.try_send(Item { tenant: tenant.clone(), batch, sizes, bytes }).is_err() {
            self.budget.give_back(bytes);
            self.metrics.dropped("queue_full", rows);
            return false;
        }
        true
    }
}

impl SpanTee for LocalTee {
    fn offer(&self, tenant: &TenantId, batch: &RecordBatch, sizes: &[u32]) {
        self.try_offer(tenant, batch.clone(), sizes.to_vec());
    }
}

struct Target {
    tx: mpsc::Sender<(PushSpans, usize, u64)>,
}

/// Sends spans to remote generators, each the traces it owns.
pub struct RemoteTee {
    targets: Vec<Target>,
    /// Each target's rendezvous id (a hash of its address), in the same order.
    ids: Vec<u64>,
    budget: ByteBudget,
    metrics: GeneratorMetrics,
}

impl RemoteTee {
    /// Connects (lazily, through `channels`, which add the cluster secret) to the generators at
    /// `addrs` (`host:port` of their internal gRPC API); at most `max_queue_bytes` of spans wait
    /// to be sent.
    pub fn new(
        addrs: &[String],
        channels: &Channels,
        max_queue_bytes: usize,
        metrics: GeneratorMetrics,
    ) -> Result<Arc<Self>, spindle_cluster_client::ClientError> {
        let budget = ByteBudget::new(max_queue_bytes);
        let mut targets = Vec::new();
        let mut ids = Vec::new();
        for addr in addrs {
            let client = GeneratorClient::new(channels.get(addr)?).max_encoding_message_size(usize::MAX);
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(send_loop(client, rx, budget.clone(), metrics.clone(), addr.clone()));
            targets.push(Target { tx });
            ids.push(xxhash_rust::xxh3::xxh3_64(addr.as_bytes()));
        }
        Ok(Arc::new(Self { targets, ids, budget, metrics }))
    }

    fn owner(&self, trace_id: &[u8]) -> usize {
        spindle_ring::rendezvous(trace_id, &self.ids).unwrap_or(0)
    }

    fn send(&self, target: usize, tenant: &TenantId, batch: &RecordBatch, sizes: Vec<u32>) {
        let rows = batch.num_rows() as u64;
        let spans = match spindle_schema::ipc::encode(std::slice::from_ref(batch)) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "metrics generator tee: encoding spans failed");
                self.metrics.dropped("invalid", rows);
                return;
            }
        };
        let bytes = spans.len();
        if !self.budget.try_take(bytes) {
            self.metrics.dropped("queue_full", rows);
            return;
        }
        let push = PushSpans { tenant: tenant.as_str().to_string(), spans, span_sizes: sizes };
        if self.targets[target].tx.try_send((push, bytes, rows)).is_err() {
            self.budget.give_back(bytes);
            self.metrics.dropped("queue_full", rows);
        }
    }
}

async fn send_loop(
    mut client: GeneratorClient<InternalChannel>,
    mut rx: mpsc::Receiver<(PushSpans, usize, u64)>,
    budget: ByteBudget,
    metrics: GeneratorMetrics,
    addr: String,
) {
    while let Some((push, bytes, rows)) = rx.recv().await {
        let status = match tokio::time::timeout(PUSH_TIMEOUT, client.push(push)).await {
            Ok(Ok(_)) => None,
            Ok(Err(status)) => Some(status),
            Err(_) => Some(tonic::Status::deadline_exceeded("push timed out")),
        };
        if let Some(status) = status {
            let reason = if status.code() == tonic::Code::ResourceExhausted { "queue_full" } else { "unreachable" };
            metrics.dropped(reason, rows);
            tracing::debug!(generator = %addr, error = %status, "metrics generator tee: push failed");
        }
        budget.give_back(bytes);
    }
}

impl SpanTee for RemoteTee {
    fn offer(&self, tenant: &TenantId, batch: &RecordBatch, sizes: &[u32]) {
        if self.targets.is_empty() || batch.num_rows() == 0 {
            return;
        }
        if self.targets.len() == 1 {
            self.send(0, tenant, batch, sizes.to_vec());
            return;
        }
        let Some(ids) = batch.column_by_name(col::TRACE_ID).and_then(|a| a.as_fixed_size_binary_opt()) else {
            self.metrics.dropped("invalid", batch.num_rows() as u64);
            return;
        };
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.targets.len()];
        for i in 0..batch.num_rows() {
            rows[self.owner(ids.value(i))].push(i as u32);
        }
        for (target, indices) in rows.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let part_sizes = indices.iter().map(|&i| sizes.get(i as usize).copied().unwrap_or(0)).collect();
            match take_record_batch(batch, &UInt32Array::from(indices)) {
                Ok(part) => self.send(target, tenant, &part, part_sizes),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics generator tee: splitting spans failed");
                }
            }
        }
    }
}
