//! Concurrent exports pushed together.
//!
//! Every export is cut into one part per shard. Sent alone, each part is a push of its own:
//! encoded, sent, decoded by the shard's leader and logged as an item, at a fixed cost of about
//! a hundred microseconds whatever its size. The batcher sends what waits at the moment a send
//! slot frees up as one round of pushes: the parts of one tenant for one shard are concatenated
//! and encoded once, and the pushes bound for one storage node go in one call (group commit, as
//! a shard does with its Raft entries). An export alone waits for nothing. (Waiting a few
//! milliseconds for exports being converted when a round starts was tried: with one round in
//! flight, 4 callers still made rounds of 2 exports, 16 callers of 8.)
//!
//! Each part keeps the digest of its own rows ([`PushPart`]), so a retried export is recognised
//! by the shards that committed it, whatever it was pushed with the first time.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use spindle_cluster_client::{Attempt, ShardRouter};
use spindle_schema::batch_bytes;
use spindle_schema::digest::{self, PushPart};
use spindle_schema::ipc::EncodedBatch;
use spindle_storage_api::{ApiError, Push, ShardId};
use spindle_types::TenantId;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::IngestMetrics;

/// One export's rows for one shard.
pub(crate) struct Part {
    /// The shard.
    pub shard: ShardId,
    /// The rows.
    pub batch: RecordBatch,
}

/// An export waiting to be pushed.
struct Waiting {
    tenant: TenantId,
    parts: Vec<(ShardId, RecordBatch, PushPart)>,
    done: oneshot::Sender<Result<(), ApiError>>,
    /// The export's share of the node's in-flight budget, until it is pushed.
    _budget: OwnedSemaphorePermit,
}

/// Sends the parts of concurrent exports together; see the module doc.
pub(crate) struct PushBatcher {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl PushBatcher {
    /// A batcher sending through `router`, with at most `in_flight` rounds of pushes at once and
    /// pushes of about `max_push_bytes` at most.
    pub fn new(router: Arc<ShardRouter>, in_flight: usize, max_push_bytes: usize, metrics: IngestMetrics) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let sender = Sender { router, max_push_bytes, metrics };
        tokio::spawn(send_loop(sender, waiting, in_flight.max(1)));
        Self { queue }
    }

    /// Pushes one export's parts; returns once every part is committed (or the first failure).
    /// `budget` (the export's share of the in-flight budget) is held until then, even if the
    /// caller leaves; an export whose caller left before its round starts is not sent.
    pub async fn push(
        &self,
        tenant: &TenantId,
        parts: Vec<Part>,
        budget: OwnedSemaphorePermit,
    ) -> Result<(), ApiError> {
        let parts = parts
            .into_iter()
            .map(|p| {
                let digest = digest::of_rows(tenant.as_str(), &p.batch);
                let rows = u32::try_from(p.batch.num_rows()).unwrap_or(u32::MAX);
                (p.shard, p.batch, PushPart { digest, rows })
            })
            .collect();
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Waiting { tenant: tenant.clone(), parts, done, _budget: budget })
            .map_err(|_| ApiError::Unavailable("the ingester is stopping".into()))?;
        answer.await.map_err(|_| ApiError::Unavailable("the ingester stopped before answering".into()))?
    }
}

/// What a round needs to send.
struct Sender {
    router: Arc<ShardRouter>,
    max_push_bytes: usize,
    metrics: IngestMetrics,
}

async fn send_loop(sender: Sender, mut queue: mpsc::UnboundedReceiver<Waiting>, in_flight: usize) {
    let sender = Arc::new(sender);
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut round = vec![first];
        while let Ok(w) = queue.try_recv() {
            round.push(w);
        }
        // Nobody waits for these any more (the client left): not acknowledged, not sent.
        round.retain(|w| !w.done.is_closed());
        if round.is_empty() {
            continue;
        }
        let sender = sender.clone();
        tokio::spawn(async move { send_round(&sender, round, slot).await });
    }
}

/// Pushes the parts of `exports` (merged per tenant and shard) and answers each export. The
/// send slot is held for the first attempt only: pushes retried (a leader moved, a node is
/// down) do not hold up the next round.
async fn send_round(sender: &Sender, exports: Vec<Waiting>, slot: OwnedSemaphorePermit) {
    let router = &sender.router;
    let (pushes, members) = match merge(&exports, sender.max_push_bytes) {
        Ok(p) => p,
        Err(e) => {
            let e = ApiError::Internal(format!("encoding spans: {e}"));
            for w in exports {
                let _ = w.done.send(Err(e.clone()));
            }
            return;
        }
    };
    sender.metrics.push_rounds.inc();
    sender.metrics.pushed_exports.inc_by(exports.len() as u64);
    sender.metrics.pushes.inc_by(pushes.len() as u64);
    let attempts = router.push_once(pushes).await;
    drop(slot);
    let results = futures::future::join_all(attempts.into_iter().map(|a| async move {
        match a {
            Attempt::Done(r) => r,
            Attempt::Retry(push) => router.push_one(push).await,
        }
    }))
    .await;
    let mut outcome: Vec<Result<(), ApiError>> = exports.iter().map(|_| Ok(())).collect();
    for (result, members) in results.into_iter().zip(members) {
        if let Err(e) = result {
            for m in members {
                if outcome[m].is_ok() {
                    outcome[m] = Err(e.clone());
                }
            }
        }
    }
    for (w, o) in exports.into_iter().zip(outcome) {
        let _ = w.done.send(o);
    }
}

/// The pushes that carry `exports`' parts (one per tenant and shard, cut at `max_push_bytes`),
/// and for each push the exports it holds rows of.
#[allow(clippy::type_complexity)]
fn merge(exports: &[Waiting], max_push_bytes: usize) -> Result<(Vec<Push>, Vec<Vec<usize>>), arrow::error::ArrowError> {
    // Parts grouped by (tenant, shard), in arrival order.
    let mut groups: Vec<(&TenantId, ShardId, Vec<(usize, &RecordBatch, PushPart)>)> = Vec::new();
    let mut index: HashMap<(&str, ShardId), usize> = HashMap::new();
    for (e, w) in exports.iter().enumerate() {
        for (shard, batch, part) in &w.parts {
            let g = *index.entry((w.tenant.as_str(), *shard)).or_insert_with(|| {
                groups.push((&w.tenant, *shard, Vec::new()));
                groups.len() - 1
            });
            groups[g].2.push((e, batch, *part));
        }
    }
    let mut pushes = Vec::new();
    let mut members = Vec::new();
    for (tenant, shard, parts) in groups {
        let mut start = 0;
        while start < parts.len() {
            // At least one part per push; more while they fit.
            let mut bytes = batch_bytes(parts[start].1);
            let mut end = start + 1;
            while end < parts.len() {
                let next = batch_bytes(parts[end].1);
                if bytes + next > max_push_bytes {
                    break;
                }
                bytes += next;
                end += 1;
            }
            let chunk = &parts[start..end];
            let batch = match chunk {
                [(_, only, _)] => (*only).clone(),
                _ => {
                    let batches: Vec<&RecordBatch> = chunk.iter().map(|(_, b, _)| *b).collect();
                    arrow::compute::concat_batches(batches[0].schema_ref(), batches)?
                }
            };
            pushes.push(Push {
                shard,
                tenant: tenant.clone(),
                batch: EncodedBatch::encode(batch)?,
                parts: chunk.iter().map(|(_, _, p)| *p).collect(),
            });
            let mut who: Vec<usize> = chunk.iter().map(|(e, _, _)| *e).collect();
            who.dedup();
            members.push(who);
            start = end;
        }
    }
    Ok((pushes, members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn rows(trace: u8, spans: u8) -> RecordBatch {
        let spans = (0..spans)
            .map(|i| Span { trace_id: vec![trace; 16], span_id: vec![i + 1; 8], ..Default::default() })
            .collect();
        let rs = ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() };
        spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch
    }

    fn waiting(tenant: &str, parts: Vec<(ShardId, RecordBatch)>) -> Waiting {
        let tenant = TenantId::new(tenant).unwrap();
        let parts = parts
            .into_iter()
            .map(|(shard, b)| {
                let part = PushPart { digest: digest::of_rows(tenant.as_str(), &b), rows: b.num_rows() as u32 };
                (shard, b, part)
            })
            .collect();
        let budget = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Waiting { tenant, parts, done: oneshot::channel().0, _budget: budget }
    }

    #[test]
    fn parts_of_one_tenant_and_shard_travel_together_within_the_size_limit() {
        let exports = vec![
            waiting("a", vec![(0, rows(1, 2)), (1, rows(2, 1))]),
            waiting("b", vec![(0, rows(3, 1))]),
            waiting("a", vec![(0, rows(4, 3)), (1, rows(5, 1))]),
        ];
        let (pushes, members) = merge(&exports, usize::MAX).unwrap();
        let shape: Vec<(&str, ShardId, usize, Vec<u32>)> = pushes
            .iter()
            .map(|p| (p.tenant.as_str(), p.shard, p.batch.num_rows(), p.parts.iter().map(|p| p.rows).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![("a", 0, 5, vec![2, 3]), ("a", 1, 2, vec![1, 1]), ("b", 0, 1, vec![1])],
            "parts in arrival order, rows adding up"
        );
        assert_eq!(members, vec![vec![0, 2], vec![0, 2], vec![1]]);
        assert_eq!(pushes[0].parts[1], exports[2].parts[0].2, "each part keeps its own digest");
        // A limit below two parts' size: one push per part.
        let (pushes, members) = merge(&exports, 1).unwrap();
        assert_eq!(pushes.len(), 5);
        assert_eq!(members, vec![vec![0], vec![2], vec![0], vec![2], vec![1]]);
    }
}
