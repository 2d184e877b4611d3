//! The storage API over gRPC (`proto/spindle/storage.proto`).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use spindle_proto::storage::storage_client::StorageClient;
use spindle_proto::storage::storage_server::{Storage, StorageServer};
use spindle_proto::storage::{PushRequest, PushResponse, ReadRequest as PbReadRequest, ReadResponse, ShardRead};
use spindle_schema::ipc;
use spindle_storage::TenantId;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::{ApiError, ReadRequest, ShardData, ShardId, StorageApi};

/// Largest internal message (a push of a full OTLP request, or a read of a busy shard).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Overloaded(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let m = s.message().to_string();
        match s.code() {
            Code::ResourceExhausted => ApiError::Overloaded(m),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => ApiError::Unavailable(m),
            Code::InvalidArgument => ApiError::InvalidArgument(m),
            _ => ApiError::Internal(m),
        }
    }
}

fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    ipc::encode(batches).map_err(|e| ApiError::Internal(format!("encoding arrow ipc: {e}")))
}

fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, ApiError> {
    ipc::decode(bytes).map_err(|e| ApiError::InvalidArgument(format!("decoding arrow ipc: {e}")))
}

/// [`StorageApi`] over a gRPC channel to a storage node.
#[derive(Clone)]
pub struct GrpcStorageClient {
    client: StorageClient<Channel>,
}

impl GrpcStorageClient {
    /// A client on an existing channel.
    pub fn new(channel: Channel) -> Self {
        let client = StorageClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { client }
    }
}

#[async_trait::async_trait]
impl StorageApi for GrpcStorageClient {
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: RecordBatch) -> Result<u64, ApiError> {
        let request = PushRequest { shard, tenant: tenant.to_string(), arrow_ipc: encode(&[batch])? };
        Ok(self.client.clone().push(request).await?.into_inner().rows)
    }

    async fn read_unflushed(&self, request: &ReadRequest) -> Result<Vec<ShardData>, ApiError> {
        let pb = PbReadRequest {
            tenant: request.tenant.to_string(),
            shards: request.shards.clone(),
            start_unix_nano: request.time_range.map(|r| r.0),
            end_unix_nano: request.time_range.map(|r| r.1),
            trace_id: request.trace_id.map(|t| t.to_vec()).unwrap_or_default(),
        };
        let response = self.client.clone().read_unflushed(pb).await?.into_inner();
        response
            .shards
            .into_iter()
            .map(|s| {
                let blocks = serde_json::from_str(&s.blocks_json)
                    .map_err(|e| ApiError::Internal(format!("decoding block list: {e}")))?;
                Ok(ShardData { shard: s.shard, batches: decode(&s.arrow_ipc)?, blocks })
            })
            .collect()
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

#[tonic::async_trait]
impl Storage for StorageGrpcServer {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let r = request.into_inner();
        let tenant = tenant(&r.tenant)?;
        let batches = decode(&r.arrow_ipc)?;
        let batch = match batches.len() {
            1 => batches.into_iter().next().ok_or_else(|| Status::invalid_argument("empty push"))?,
            0 => return Ok(Response::new(PushResponse { rows: 0 })),
            _ => {
                let schema = batches[0].schema();
                arrow::compute::concat_batches(&schema, &batches)
                    .map_err(|e| Status::invalid_argument(format!("concatenating batches: {e}")))?
            }
        };
        let rows = self.api.push(r.shard, &tenant, batch).await?;
        Ok(Response::new(PushResponse { rows }))
    }

    async fn read_unflushed(&self, request: Request<PbReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let r = request.into_inner();
        let trace_id = match r.trace_id.len() {
            0 => None,
            16 => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&r.trace_id);
                Some(id)
            }
            n => return Err(Status::invalid_argument(format!("trace id must be 16 bytes, got {n}"))),
        };
        let time_range = match (r.start_unix_nano, r.end_unix_nano) {
            (Some(s), Some(e)) => Some((s, e)),
            _ => None,
        };
        let request = ReadRequest { tenant: tenant(&r.tenant)?, shards: r.shards, time_range, trace_id };
        let data = self.api.read_unflushed(&request).await?;
        let mut shards = Vec::with_capacity(data.len());
        for d in data {
            let blocks_json =
                serde_json::to_string(&d.blocks).map_err(|e| Status::internal(format!("encoding block list: {e}")))?;
            shards.push(ShardRead { shard: d.shard, arrow_ipc: encode(&d.batches)?, blocks_json });
        }
        Ok(Response::new(ReadResponse { shards }))
    }
}
