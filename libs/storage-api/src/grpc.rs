//! The storage data plane over gRPC (`proto/spindle/storage.proto`, service `Storage`).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use spindle_auth::cluster::InternalChannel;
use spindle_proto::storage::read_chunk::Chunk;
use spindle_proto::storage::storage_client::StorageClient;
use spindle_proto::storage::storage_server::{Storage, StorageServer};
use spindle_proto::storage::{
    CompactionRequest, CompactionResponse, PushManyRequest, PushManyResponse, PushRequest, PushResponse, PushResult,
    ReadChunk, ReadHeader, ReadRequest,
};
use spindle_schema::ipc::{self, EncodedBatch};
use spindle_storage::{BlockMeta, TenantId};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::{
    ApiError, CompactionJob, CompactionPolicy, Push, PushPart, ShardId, ShardRead, ShardReadRequest, StorageApi,
};

/// Largest internal message: a push of one chunk of an OTLP request, or one slice of a read.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Rows per streamed read message, so one message stays far below [`MAX_MESSAGE_BYTES`].
pub const READ_CHUNK_ROWS: usize = 8192;

/// Metadata key of the leader hint on an UNAVAILABLE answer.
pub const LEADER_METADATA: &str = "x-spindle-leader";

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Overloaded(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) | ApiError::Unreachable(m) => Status::unavailable(m),
            ApiError::NotLeader { shard, leader } => {
                let mut metadata = MetadataMap::new();
                if let Some(l) = leader {
                    metadata.insert(LEADER_METADATA, MetadataValue::from(l));
                }
                let message = format!("not the leader of shard {shard}");
                Status::with_metadata(Code::Unavailable, message, metadata)
            }
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

impl ApiError {
    /// The error a gRPC status stands for; `shard` names the shard the call was about.
    pub fn from_status(s: &Status, shard: ShardId) -> Self {
        let m = s.message().to_string();
        if std::error::Error::source(s).is_some() {
            // The transport failed (connect, reset, timeout): the node itself said nothing.
            return ApiError::Unreachable(format!("{:?}: {m}", s.code()));
        }
        match s.code() {
            Code::ResourceExhausted => ApiError::Overloaded(m),
            Code::Unavailable if m.starts_with("not the leader") => {
                let leader =
                    s.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                ApiError::NotLeader { shard, leader }
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled | Code::Unknown => {
                ApiError::Unavailable(format!("{:?}: {m}", s.code()))
            }
            Code::InvalidArgument => ApiError::InvalidArgument(m),
            _ => ApiError::Internal(m),
        }
    }
}

/// The result of one push, as it travels in a `PushMany` answer.
fn push_result(result: Result<u64, ApiError>) -> PushResult {
    match result {
        Ok(rows) => PushResult { rows, ..Default::default() },
        Err(e) => {
            let leader = match &e {
                ApiError::NotLeader { leader, .. } => *leader,
                _ => None,
            };
            let status = Status::from(e);
            PushResult { rows: 0, error_code: status.code() as i32, error: status.message().to_string(), leader }
        }
    }
}

/// A `PushMany` result back into what a `Push` call would have answered.
fn from_push_result(r: PushResult, shard: ShardId) -> Result<u64, ApiError> {
    if r.error_code == 0 {
        return Ok(r.rows);
    }
    let mut metadata = MetadataMap::new();
    if let Some(l) = r.leader {
        metadata.insert(LEADER_METADATA, MetadataValue::from(l));
    }
    Err(ApiError::from_status(&Status::with_metadata(Code::from_i32(r.error_code), r.error, metadata), shard))
}

fn to_proto_part(p: &PushPart) -> spindle_proto::storage::PushPart {
    spindle_proto::storage::PushPart { digest_lo: p.digest[0], digest_hi: p.digest[1], rows: p.rows }
}

fn from_proto_part(p: &spindle_proto::storage::PushPart) -> PushPart {
    PushPart { digest: [p.digest_lo, p.digest_hi], rows: p.rows }
}

/// Body of a `CommitCompaction` call.
#[derive(serde::Serialize, serde::Deserialize)]
struct CommitBody {
    job: CompactionJob,
    output: BlockMeta,
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(format!("encoding json: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ApiError> {
    serde_json::from_str(json).map_err(|e| ApiError::InvalidArgument(format!("decoding json: {e}")))
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(format!("decoding arrow ipc: {e}"))
}

/// [`StorageApi`] over a gRPC channel to a storage node.
#[derive(Clone)]
pub struct GrpcStorageClient {
    client: StorageClient<InternalChannel>,
}

impl GrpcStorageClient {
    /// A client on an existing channel.
    pub fn new(channel: InternalChannel) -> Self {
        let client = StorageClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { client }
    }
}

#[async_trait::async_trait]
impl StorageApi for GrpcStorageClient {
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: EncodedBatch) -> Result<u64, ApiError> {
        let request =
            PushRequest { shard, tenant: tenant.to_string(), arrow_ipc: batch.ipc().clone(), parts: Vec::new() };
        match self.client.clone().push(request).await {
            Ok(r) => Ok(r.into_inner().rows),
            // A node of an earlier version reads only plain IPC streams: once more in that form.
            Err(s) if s.code() == Code::InvalidArgument && ipc::is_compressed(batch.ipc()) => {
                let plain = batch.to_plain().map_err(|e| ApiError::Internal(format!("encoding spans: {e}")))?;
                let request = PushRequest {
                    shard,
                    tenant: tenant.to_string(),
                    arrow_ipc: plain.ipc().clone(),
                    parts: Vec::new(),
                };
                let r = self.client.clone().push(request).await.map_err(|s| ApiError::from_status(&s, shard))?;
                Ok(r.into_inner().rows)
            }
            Err(s) => Err(ApiError::from_status(&s, shard)),
        }
    }

    async fn push_many(&self, pushes: Vec<Push>) -> Vec<Result<u64, ApiError>> {
        let request = PushManyRequest {
            pushes: pushes
                .iter()
                .map(|p| PushRequest {
                    shard: p.shard,
                    tenant: p.tenant.to_string(),
                    arrow_ipc: p.batch.ipc().clone(),
                    parts: p.parts.iter().map(to_proto_part).collect(),
                })
                .collect(),
        };
        match self.client.clone().push_many(request).await {
            Ok(r) => {
                let results = r.into_inner().results;
                if results.len() != pushes.len() {
                    let e = ApiError::Internal(format!("{} results for {} pushes", results.len(), pushes.len()));
                    return pushes.iter().map(|_| Err(e.clone())).collect();
                }
                results.into_iter().zip(&pushes).map(|(r, p)| from_push_result(r, p.shard)).collect()
            }
            // A node of an earlier version: one call per push.
            Err(s) if s.code() == Code::Unimplemented => {
                futures::future::join_all(pushes.iter().map(|p| self.push(p.shard, &p.tenant, p.batch.clone()))).await
            }
            Err(s) => pushes.iter().map(|p| Err(ApiError::from_status(&s, p.shard))).collect(),
        }
    }

    async fn read(&self, request: ShardReadRequest) -> Result<ShardRead, ApiError> {
        let shard = request.shard;
        let pb = ReadRequest {
            tenant: request.tenant.to_string(),
            shard,
            start_unix_nano: request.time_range.map(|r| r.0),
            end_unix_nano: request.time_range.map(|r| r.1),
            trace_ids: request.trace_ids.unwrap_or_default().iter().map(|t| Bytes::copy_from_slice(t)).collect(),
            project: request.projection.is_some(),
            projection: request.projection.unwrap_or_default().into_iter().map(|i| i as u32).collect(),
        };
        let mut stream = self.client.clone().read(pb).await.map_err(|s| ApiError::from_status(&s, shard))?.into_inner();
        let header = match stream.message().await.map_err(|s| ApiError::from_status(&s, shard))? {
            Some(ReadChunk { chunk: Some(Chunk::Header(h)) }) => h,
            _ => return Err(ApiError::Internal(format!("shard {shard} read did not start with a header"))),
        };
        let blocks = serde_json::from_str(&header.blocks_json)
            .map_err(|e| ApiError::Internal(format!("decoding block list of shard {shard}: {e}")))?;
        let batches = stream
            .map_err(move |s| ApiError::from_status(&s, shard))
            .and_then(|chunk| async move {
                match chunk.chunk {
                    Some(Chunk::ArrowIpc(bytes)) => ipc::decode(&bytes).map_err(invalid),
                    _ => Err(ApiError::Internal("unexpected message in a shard read".into())),
                }
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten()
            .boxed();
        Ok(ShardRead { blocks, batches })
    }

    async fn plan_compaction(
        &self,
        shard: ShardId,
        policy: CompactionPolicy,
    ) -> Result<Option<CompactionJob>, ApiError> {
        let request = CompactionRequest { shard, json: to_json(&policy)? };
        let answer =
            self.client.clone().plan_compaction(request).await.map_err(|s| ApiError::from_status(&s, shard))?;
        from_json(&answer.into_inner().json)
    }

    async fn commit_compaction(&self, job: CompactionJob, output: BlockMeta) -> Result<(), ApiError> {
        let shard = job.shard;
        let request = CompactionRequest { shard, json: to_json(&CommitBody { job, output })? };
        self.client.clone().commit_compaction(request).await.map_err(|s| ApiError::from_status(&s, shard))?;
        Ok(())
    }
}

/// Serves any [`StorageApi`] (normally a storage node) over gRPC.
pub struct StorageGrpcServer {
    api: Arc<dyn StorageApi>,
}

impl StorageGrpcServer {
    /// The tonic service for `api`.
    pub fn service(api: Arc<dyn StorageApi>) -> StorageServer<Self> {
        StorageServer::new(Self { api })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn tenant(id: &str) -> Result<TenantId, Status> {
    TenantId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Splits a batch into messages of at most [`READ_CHUNK_ROWS`] rows.
fn encode_chunks(batch: RecordBatch) -> Vec<Result<ReadChunk, Status>> {
    let rows = batch.num_rows();
    (0..rows)
        .step_by(READ_CHUNK_ROWS)
        .map(|offset| {
            let slice = batch.slice(offset, READ_CHUNK_ROWS.min(rows - offset));
            // Plain IPC: queriers of an earlier version read it too.
            ipc::encode_plain(&[slice])
                .map(|bytes| ReadChunk { chunk: Some(Chunk::ArrowIpc(Bytes::from(bytes))) })
                .map_err(|e| Status::internal(format!("encoding arrow ipc: {e}")))
        })
        .collect()
}

#[tonic::async_trait]
impl Storage for StorageGrpcServer {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let r = request.into_inner();
        let tenant = tenant(&r.tenant)?;
        let batch = EncodedBatch::decode(r.arrow_ipc)
            .map_err(|e| Status::invalid_argument(format!("decoding arrow ipc: {e}")))?;
        if batch.num_rows() == 0 {
            return Ok(Response::new(PushResponse { rows: 0 }));
        }
        let parts = r.parts.iter().map(from_proto_part).collect();
        let push = Push { shard: r.shard, tenant, batch, parts };
        let rows = self
            .api
            .push_many(vec![push])
            .await
            .pop()
            .unwrap_or_else(|| Err(ApiError::Internal("no result".into())))?;
        Ok(Response::new(PushResponse { rows }))
    }

    async fn push_many(&self, request: Request<PushManyRequest>) -> Result<Response<PushManyResponse>, Status> {
        let pushes = request.into_inner().pushes;
        let mut valid = Vec::with_capacity(pushes.len());
        let mut results: Vec<Option<PushResult>> = Vec::with_capacity(pushes.len());
        for p in pushes {
            let decoded = TenantId::new(&p.tenant)
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))
                .and_then(|tenant| Ok((tenant, EncodedBatch::decode(p.arrow_ipc).map_err(invalid)?)));
            match decoded {
                Ok((_, batch)) if batch.num_rows() == 0 => results.push(Some(push_result(Ok(0)))),
                Ok((tenant, batch)) => {
                    results.push(None);
                    let parts = p.parts.iter().map(from_proto_part).collect();
                    valid.push(Push { shard: p.shard, tenant, batch, parts });
                }
                Err(e) => results.push(Some(push_result(Err(e)))),
            }
        }
        let mut stored = self.api.push_many(valid).await.into_iter();
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    push_result(stored.next().unwrap_or(Err(ApiError::Internal("missing result".into()))))
                })
            })
            .collect();
        Ok(Response::new(PushManyResponse { results }))
    }

    type ReadStream = BoxStream<'static, Result<ReadChunk, Status>>;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let r = request.into_inner();
        let trace_ids = r
            .trace_ids
            .iter()
            .map(|t| <[u8; 16]>::try_from(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Status::invalid_argument("trace ids must be 16 bytes"))?;
        let columns = spindle_schema::span_schema().fields().len();
        let projection: Vec<usize> = r.projection.iter().map(|i| *i as usize).collect();
        if let Some(bad) = projection.iter().find(|i| **i >= columns) {
            return Err(Status::invalid_argument(format!(
                "column {bad} is not in the span schema ({columns} columns)"
            )));
        }
        let request = ShardReadRequest {
            tenant: tenant(&r.tenant)?,
            shard: r.shard,
            time_range: r.start_unix_nano.zip(r.end_unix_nano),
            trace_ids: (!trace_ids.is_empty()).then_some(trace_ids),
            projection: r.project.then_some(projection),
        };
        let read = self.api.read(request).await?;
        let blocks_json =
            serde_json::to_string(&read.blocks).map_err(|e| Status::internal(format!("encoding block list: {e}")))?;
        let header = ReadChunk { chunk: Some(Chunk::Header(ReadHeader { blocks_json })) };
        let body = read
            .batches
            .map(|b| match b {
                Ok(batch) => futures::stream::iter(encode_chunks(batch)),
                Err(e) => futures::stream::iter(vec![Err(Status::from(e))]),
            })
            .flatten();
        Ok(Response::new(futures::stream::once(async { Ok(header) }).chain(body).boxed()))
    }

    async fn plan_compaction(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = request.into_inner();
        let policy: CompactionPolicy = from_json(&r.json)?;
        let job = self.api.plan_compaction(r.shard, policy).await?;
        Ok(Response::new(CompactionResponse { json: to_json(&job)? }))
    }

    async fn commit_compaction(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = request.into_inner();
        let body: CommitBody = from_json(&r.json)?;
        if body.job.shard != r.shard {
            return Err(Status::invalid_argument("the job belongs to another shard"));
        }
        self.api.commit_compaction(body.job, body.output).await?;
        Ok(Response::new(CompactionResponse { json: "null".into() }))
    }
}
