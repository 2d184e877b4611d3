//! Raft traffic between storage nodes: every group of a node shares one long-lived stream to
//! each peer, and the messages of all groups queued at the moment travel in one frame.
//!
//! [`GrpcNetwork`] is the client openraft uses to reach a group's members: it hands each
//! message to the [`RaftLinks`] of the node, whose per-peer task packs what is queued into one
//! `RaftFrame` on the peer's `Raft/Stream` call and pairs replies with requests by id. Frames
//! of heartbeats only (idle groups) wait a few milliseconds for company, so the heartbeats of
//! many groups share frames. [`RaftService`] serves the stream (and the one-message calls of
//! earlier versions): each message goes to the group it names at once, and replies are packed
//! into frames as they come, so a slow group does not hold up the others. Bodies are openraft's
//! own request and response types, bincode-encoded. A group a node does not host (yet) answers
//! `NOT_FOUND`, which the sender treats as unreachable and backs off from. A peer of an earlier
//! version (no stream) is called one message per call.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spindle_cluster::{ShardId, META_GROUP};
use spindle_cluster_client::Channels;
use spindle_proto::storage::raft_client::RaftClient;
use spindle_proto::storage::raft_server::{Raft as RaftRpc, RaftServer};
use spindle_proto::storage::{RaftFrame, RaftKind, RaftMessage, RaftPayload};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::raft_types::{MetaTypes, ShardTypes};

/// Largest Raft message (AppendEntries reads are capped well below it).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// A frame is closed once it holds this many bytes of messages (one message may exceed it).
const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// How long a frame of heartbeats only waits for more messages.
const HEARTBEAT_COALESCE: Duration = Duration::from_millis(1);

/// Messages a receiving stream hands to groups at once, at most.
const MAX_IN_FLIGHT_PER_STREAM: usize = 4096;

/// What a Raft type configuration must be to travel over [`GrpcNetwork`].
pub trait WireTypes: RaftTypeConfig<NodeId = u64, Node = BasicNode> {}

impl<C: RaftTypeConfig<NodeId = u64, Node = BasicNode>> WireTypes for C {}

/// Failures of the Raft transport.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer's address is unusable.
    #[error("raft peer {addr}: {message}")]
    Address {
        /// Peer address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The peer answered with an error, or the call failed.
    #[error("raft rpc to {addr}: {status}")]
    Rpc {
        /// Peer address.
        addr: String,
        /// What came back.
        status: Status,
    },
    /// The stream to the peer broke before the reply came.
    #[error("raft stream to {addr} closed before the reply")]
    LinkDown {
        /// Peer address.
        addr: String,
    },
    /// No reply within the call's time.
    #[error("raft peer {addr} did not reply within {ttl:?}")]
    Timeout {
        /// Peer address.
        addr: String,
        /// The time allowed.
        ttl: Duration,
    },
    /// A body could not be encoded or decoded.
    #[error("raft message encoding: {0}")]
    Codec(String),
}

impl TransportError {
    /// Whether the peer is to be treated as unreachable (openraft backs off from it).
    fn unreachable(&self) -> bool {
        match self {
            TransportError::Rpc { status, .. } => {
                matches!(status.code(), Code::Unavailable | Code::NotFound | Code::Unknown | Code::Cancelled)
            }
            TransportError::LinkDown { .. } | TransportError::Address { .. } => true,
            TransportError::Timeout { .. } | TransportError::Codec(_) => false,
        }
    }
}

/// A message waiting for its frame.
struct Outgoing {
    group: u32,
    kind: RaftKind,
    body: Bytes,
    heartbeat: bool,
    reply: oneshot::Sender<Result<Bytes, TransportError>>,
}

/// The node's streams to its peers, one per peer address, each served by a task that packs
/// queued messages into frames. Cheap to clone.
#[derive(Clone)]
pub struct RaftLinks {
    channels: Channels,
    links: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Outgoing>>>>,
    stats: Arc<LinkCounters>,
    reads: Arc<Mutex<HashMap<String, PeerReads>>>,
}

/// What a peer's version reads of what shard leaders write, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerReads {
    /// Plain Arrow IPC only (no Raft stream: an earlier version).
    PlainIpc,
    /// Compressed span batches, one export per push.
    Compressed,
    /// Pushes holding several exports too (`ShardCommand::AppendParts`).
    Parts,
}

/// Response header of the Raft stream naming what the serving version reads (absent: only
/// [`PeerReads::Compressed`]).
const READS_HEADER: &str = "x-spindle-raft-reads";
/// Its value for [`PeerReads::Parts`].
const READS_PARTS: &str = "parts";

/// What the links have sent since start.
#[derive(Debug, Default)]
struct LinkCounters {
    frames: std::sync::atomic::AtomicU64,
    appends: std::sync::atomic::AtomicU64,
    heartbeats: std::sync::atomic::AtomicU64,
}

/// Raft traffic a node has sent since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames (each carries every message queued for its peer at the moment).
    pub frames: u64,
    /// AppendEntries carrying entries.
    pub appends: u64,
    /// AppendEntries without entries (heartbeats, commit updates, leadership checks).
    pub heartbeats: u64,
}

impl RaftLinks {
    /// Links over `channels`.
    pub fn new(channels: Channels) -> Self {
        Self { channels, links: Arc::default(), stats: Arc::default(), reads: Arc::default() }
    }

    /// What all of `peers` are known to read (learnt when their stream last opened). A peer
    /// not reached since this node started counts as the oldest version: it may not read what
    /// this version writes.
    pub fn peers_read(&self, peers: impl IntoIterator<Item = impl AsRef<str>>) -> PeerReads {
        let known = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .into_iter()
            .map(|p| known.get(p.as_ref()).copied().unwrap_or(PeerReads::PlainIpc))
            .min()
            .unwrap_or(PeerReads::Parts)
    }

    /// Raft traffic sent since start.
    pub fn stats(&self) -> LinkStats {
        use std::sync::atomic::Ordering::Relaxed;
        LinkStats {
            frames: self.stats.frames.load(Relaxed),
            appends: self.stats.appends.load(Relaxed),
            heartbeats: self.stats.heartbeats.load(Relaxed),
        }
    }

    /// Sends one message to `addr` and waits up to `ttl` for its reply.
    async fn call(
        &self,
        addr: &str,
        group: u32,
        kind: RaftKind,
        body: Bytes,
        heartbeat: bool,
        ttl: Duration,
    ) -> Result<Bytes, TransportError> {
        if kind == RaftKind::AppendEntries {
            let counter = if heartbeat { &self.stats.heartbeats } else { &self.stats.appends };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (reply, answer) = oneshot::channel();
        let mut message = Outgoing { group, kind, body, heartbeat, reply };
        for _ in 0..2 {
            let link = {
                let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
                links
                    .entry(addr.to_string())
                    .or_insert_with(|| {
                        let (queue, rx) = mpsc::unbounded_channel();
                        tokio::spawn(run_link(
                            addr.to_string(),
                            self.channels.clone(),
                            rx,
                            self.stats.clone(),
                            self.reads.clone(),
                        ));
                        queue
                    })
                    .clone()
            };
            match link.send(message) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    // The link's task ended (it never should): start a new one.
                    self.links.lock().unwrap_or_else(|e| e.into_inner()).remove(addr);
                    message = back;
                }
            }
        }
        match tokio::time::timeout(ttl, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TransportError::LinkDown { addr: addr.to_string() }),
            Err(_) => Err(TransportError::Timeout { addr: addr.to_string(), ttl }),
        }
    }
}

/// Replies awaited on one stream, by message id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, TransportError>>>>>;

/// An open stream to a peer.
struct OpenStream {
    frames: mpsc::Sender<RaftFrame>,
    pending: Pending,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl OpenStream {
    fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How a link reaches its peer.
enum Mode {
    /// No stream open yet (or it broke).
    Closed,
    /// One stream for everything.
    Stream(OpenStream),
    /// The peer had no stream (an earlier version) when asked then: a call per message, and
    /// the stream is tried again after [`REPROBE`].
    Unary(std::time::Instant),
}

/// How long a link to a peer without the stream makes one call per message before it tries
/// the stream again (the peer may have been upgraded).
const REPROBE: Duration = Duration::from_secs(60);

fn fail_all(pending: &Pending, addr: &str) {
    let waiting: Vec<_> = pending.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, tx)| tx).collect();
    for tx in waiting {
        let _ = tx.send(Err(TransportError::LinkDown { addr: addr.to_string() }));
    }
}

/// Serves one peer: takes queued messages, packs them into frames, and keeps a stream open.
async fn run_link(
    addr: String,
    channels: Channels,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    stats: Arc<LinkCounters>,
    reads: Arc<Mutex<HashMap<String, PeerReads>>>,
) {
    let mut mode = Mode::Closed;
    let mut next_id = 0u64;
    while let Some(first) = queue.recv().await {
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        while bytes < MAX_FRAME_BYTES {
            match queue.try_recv() {
                Ok(m) => {
                    bytes += m.body.len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        if batch.iter().all(|m| m.heartbeat) {
            // Idle groups: let the heartbeats of others catch up and share the frame.
            let wait = tokio::time::sleep(HEARTBEAT_COALESCE);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    m = queue.recv() => match m {
                        Some(m) => {
                            let more = m.heartbeat;
                            batch.push(m);
                            if !more { break; }
                        }
                        None => break,
                    },
                    _ = &mut wait => break,
                }
            }
        }
        let stale = match &mode {
            Mode::Closed => true,
            Mode::Stream(s) => s.is_broken(),
            Mode::Unary(since) => since.elapsed() > REPROBE,
        };
        if stale {
            mode = match open_stream(&addr, &channels).await {
                Ok((m, peer_reads)) => {
                    reads.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.clone(), peer_reads);
                    m
                }
                Err(e) => {
                    for m in batch {
                        let _ = m.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            };
        }
        match &mode {
            Mode::Stream(stream) => {
                let mut frame = RaftFrame { messages: Vec::with_capacity(batch.len()) };
                {
                    let mut pending = stream.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if pending.len() > MAX_IN_FLIGHT_PER_STREAM {
                        // Callers that gave up (timed out) leave their entries behind.
                        pending.retain(|_, tx| !tx.is_closed());
                    }
                    for m in batch {
                        next_id += 1;
                        pending.insert(next_id, m.reply);
                        frame.messages.push(RaftMessage {
                            id: next_id,
                            group: m.group,
                            kind: m.kind as i32,
                            body: m.body,
                            ..Default::default()
                        });
                    }
                }
                stats.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if stream.frames.send(frame).await.is_err() {
                    stream.broken.store(true, std::sync::atomic::Ordering::Relaxed);
                    fail_all(&stream.pending, &addr);
                }
            }
            Mode::Unary(_) => {
                for m in batch {
                    let (addr, channels) = (addr.clone(), channels.clone());
                    tokio::spawn(async move {
                        let _ = m.reply.send(call_unary(&addr, &channels, m.group, m.kind, m.body).await);
                    });
                }
            }
            Mode::Closed => {}
        }
    }
}

fn client(
    addr: &str,
    channels: &Channels,
) -> Result<RaftClient<spindle_cluster_client::InternalChannel>, TransportError> {
    let channel =
        channels.get(addr).map_err(|e| TransportError::Address { addr: addr.to_string(), message: e.to_string() })?;
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
}

/// Opens the stream to `addr`, and the task that pairs its replies with requests.
async fn open_stream(addr: &str, channels: &Channels) -> Result<(Mode, PeerReads), TransportError> {
    let mut client = client(addr, channels)?;
    let (frames, outbound) = mpsc::channel::<RaftFrame>(64);
    let response = match client.stream(tokio_stream::wrappers::ReceiverStream::new(outbound)).await {
        Ok(r) => r,
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::info!(peer = addr, "peer has no raft stream (an earlier version): one call per message");
            return Ok((Mode::Unary(std::time::Instant::now()), PeerReads::PlainIpc));
        }
        Err(status) => return Err(TransportError::Rpc { addr: addr.to_string(), status }),
    };
    let reads = match response.metadata().get(READS_HEADER).and_then(|v| v.to_str().ok()) {
        Some(READS_PARTS) => PeerReads::Parts,
        _ => PeerReads::Compressed,
    };
    let mut inbound = response.into_inner();
    let pending: Pending = Arc::default();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (reader_pending, reader_broken, peer) = (pending.clone(), broken.clone(), addr.to_string());
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(frame)) => {
                    let mut waiting = reader_pending.lock().unwrap_or_else(|e| e.into_inner());
                    for m in frame.messages {
                        let Some(tx) = waiting.remove(&m.id) else { continue };
                        let result = if m.error_code != 0 {
                            Err(TransportError::Rpc {
                                addr: peer.clone(),
                                status: Status::new(Code::from_i32(m.error_code), m.error),
                            })
                        } else {
                            Ok(m.body)
                        };
                        let _ = tx.send(result);
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(peer = %peer, %status, "raft stream broke");
                    break;
                }
            }
        }
        reader_broken.store(true, std::sync::atomic::Ordering::Relaxed);
        fail_all(&reader_pending, &peer);
    });
    Ok((Mode::Stream(OpenStream { frames, pending, broken }), reads))
}

/// One message in one call (a peer of an earlier version).
async fn call_unary(
    addr: &str,
    channels: &Channels,
    group: u32,
    kind: RaftKind,
    body: Bytes,
) -> Result<Bytes, TransportError> {
    let mut client = client(addr, channels)?;
    let req = Request::new(RaftPayload { group, body });
    let reply = match kind {
        RaftKind::AppendEntries => client.append_entries(req).await,
        RaftKind::Vote => client.vote(req).await,
        RaftKind::InstallSnapshot => client.install_snapshot(req).await,
    }
    .map_err(|status| TransportError::Rpc { addr: addr.to_string(), status })?;
    Ok(reply.into_inner().body)
}

/// Network factory of one group.
pub struct GrpcNetwork<C> {
    group: u32,
    links: RaftLinks,
    _types: PhantomData<fn() -> C>,
}

impl<C> GrpcNetwork<C> {
    /// The network of group `group` (a shard id or [`META_GROUP`]) over the node's links.
    pub fn new(group: u32, links: RaftLinks) -> Self {
        Self { group, links, _types: PhantomData }
    }
}

/// A connection to one member of a group.
pub struct GrpcPeer<C> {
    target: u64,
    addr: String,
    group: u32,
    links: RaftLinks,
    _types: PhantomData<fn() -> C>,
}

impl<C: WireTypes> RaftNetworkFactory<C> for GrpcNetwork<C> {
    type Network = GrpcPeer<C>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcPeer<C> {
        GrpcPeer { target, addr: node.addr.clone(), group: self.group, links: self.links.clone(), _types: PhantomData }
    }
}

impl<C: WireTypes> GrpcPeer<C> {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RaftKind,
        request: &Req,
        heartbeat: bool,
        ttl: Duration,
    ) -> Result<Resp, TransportError> {
        let body = Bytes::from(bincode::serialize(request).map_err(|e| TransportError::Codec(e.to_string()))?);
        let reply = self.links.call(&self.addr, self.group, kind, body, heartbeat, ttl).await?;
        bincode::deserialize(&reply).map_err(|e| TransportError::Codec(e.to_string()))
    }

    fn rpc_error<E: std::error::Error>(&self, e: TransportError) -> RPCError<u64, BasicNode, E> {
        if e.unreachable() {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

impl<C: WireTypes> RaftNetwork<C> for GrpcPeer<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let heartbeat = rpc.entries.is_empty();
        let reply: Result<AppendEntriesResponse<u64>, RaftError<u64>> = self
            .call(RaftKind::AppendEntries, &rpc, heartbeat, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let reply: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> = self
            .call(RaftKind::InstallSnapshot, &rpc, false, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let reply: Result<VoteResponse<u64>, RaftError<u64>> =
            self.call(RaftKind::Vote, &rpc, false, option.hard_ttl()).await.map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}

/// The groups a node hosts, as the Raft service finds them.
#[async_trait::async_trait]
pub trait RaftGroups: Send + Sync + 'static {
    /// The metadata group, once opened.
    fn meta(&self) -> Option<Raft<MetaTypes>>;
    /// A data shard's group, if hosted here (opened on the spot if this node is to host it
    /// but has not opened it yet: a new group's first votes can arrive before that).
    async fn shard(&self, id: ShardId) -> Option<Raft<ShardTypes>>;
    /// Becomes `true` when the node stops: the streams it serves end then, so a graceful
    /// shutdown of its server does not wait for them.
    fn stopping(&self) -> watch::Receiver<bool>;
}

/// Serves Raft calls for every group of a node.
pub struct RaftService {
    groups: Arc<dyn RaftGroups>,
}

impl RaftService {
    /// The tonic service.
    pub fn service(groups: Arc<dyn RaftGroups>) -> RaftServer<Self> {
        RaftServer::new(Self { groups })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

/// Hands one message to the group it names; the group's encoded reply.
async fn dispatch(groups: &dyn RaftGroups, kind: RaftKind, group: u32, body: &[u8]) -> Result<Vec<u8>, Status> {
    if group == META_GROUP {
        let raft = groups.meta().ok_or_else(|| Status::not_found("the metadata group is not open on this node"))?;
        handle(&raft, kind, body).await
    } else {
        let raft = groups
            .shard(group)
            .await
            .ok_or_else(|| Status::not_found(format!("shard {group} is not hosted on this node")))?;
        handle(&raft, kind, body).await
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    bincode::deserialize(body).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(value).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

async fn handle<C: WireTypes>(raft: &Raft<C>, kind: RaftKind, body: &[u8]) -> Result<Vec<u8>, Status> {
    match kind {
        RaftKind::AppendEntries => encode(&raft.append_entries(decode::<AppendEntriesRequest<C>>(body)?).await),
        RaftKind::Vote => encode(&raft.vote(decode::<VoteRequest<u64>>(body)?).await),
        RaftKind::InstallSnapshot => encode(&raft.install_snapshot(decode::<InstallSnapshotRequest<C>>(body)?).await),
    }
}

/// The reply to one streamed message.
async fn answer(groups: &dyn RaftGroups, message: RaftMessage) -> RaftMessage {
    let result = match RaftKind::try_from(message.kind) {
        Ok(kind) => dispatch(groups, kind, message.group, &message.body).await,
        Err(_) => Err(Status::invalid_argument(format!("unknown raft message kind {}", message.kind))),
    };
    let (body, error_code, error) = match result {
        Ok(body) => (Bytes::from(body), 0, String::new()),
        Err(status) => (Bytes::new(), status.code() as i32, status.message().to_string()),
    };
    RaftMessage { id: message.id, group: message.group, kind: message.kind, body, error_code, error }
}

/// Replies packed into frames as they come.
fn reply_frames(replies: mpsc::UnboundedReceiver<RaftMessage>) -> impl Stream<Item = Result<RaftFrame, Status>> {
    futures::stream::unfold(replies, |mut replies| async move {
        let first = replies.recv().await?;
        let mut bytes = first.body.len();
        let mut messages = vec![first];
        while bytes < MAX_FRAME_BYTES {
            match replies.try_recv() {
                Ok(m) => {
                    bytes += m.body.len();
                    messages.push(m);
                }
                Err(_) => break,
            }
        }
        Some((Ok(RaftFrame { messages }), replies))
    })
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<RaftFrame, Status>> + Send>>;

    async fn stream(&self, request: Request<Streaming<RaftFrame>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, rx) = mpsc::unbounded_channel();
        let groups = self.groups.clone();
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
        let mut stopping = groups.stopping();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = inbound.message() => match frame {
                        Ok(Some(frame)) => frame,
                        _ => return,
                    },
                    _ = stopping.wait_for(|s| *s) => return,
                };
                for message in frame.messages {
                    let Ok(permit) = limit.clone().acquire_owned().await else { return };
                    let (groups, replies) = (groups.clone(), replies.clone());
                    tokio::spawn(async move {
                        let reply = answer(groups.as_ref(), message).await;
                        drop(permit);
                        let _ = replies.send(reply);
                    });
                }
            }
        });
        let mut response = Response::new(Box::pin(reply_frames(rx)) as Self::StreamStream);
        response.metadata_mut().insert(READS_HEADER, tonic::metadata::MetadataValue::from_static(READS_PARTS));
        Ok(response)
    }

    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        let body = dispatch(self.groups.as_ref(), RaftKind::AppendEntries, p.group, &p.body).await?;
        Ok(Response::new(RaftPayload { group: p.group, body: Bytes::from(body) }))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        let body = dispatch(self.groups.as_ref(), RaftKind::Vote, p.group, &p.body).await?;
        Ok(Response::new(RaftPayload { group: p.group, body: Bytes::from(body) }))
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        let body = dispatch(self.groups.as_ref(), RaftKind::InstallSnapshot, p.group, &p.body).await?;
        Ok(Response::new(RaftPayload { group: p.group, body: Bytes::from(body) }))
    }
}
