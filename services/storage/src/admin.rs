//! HTTP admin endpoints of a storage node.
//!
//! - `GET /admin/status`: this node, its metadata replica and its shard replicas (role, term,
//!   leader, log and apply positions, unflushed bytes, blocks).
//! - `GET /admin/cluster`: the cluster state (nodes, shards, replicas, moves).
//! - `POST /admin/nodes/{id}/drain`: moves every replica off a node; `.../activate` undoes it.
//! - `POST /admin/shards?add=N`: adds shards.
//!
//! Changes go through the metadata leader from whichever node receives them.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use spindle_cluster::{MetaCommand, NodeId, NodeState};

use crate::node::StorageNode;

/// The admin routes.
pub fn routes(node: Arc<StorageNode>) -> Router {
    Router::new()
        .route("/admin/status", get(|State(n): State<Arc<StorageNode>>| async move { Json(n.status()) }))
        .route(
            "/admin/cluster",
            get(|State(n): State<Arc<StorageNode>>| async move { Json(n.state().as_ref().clone()) }),
        )
        .route("/admin/nodes/{id}/drain", post(drain))
        .route("/admin/nodes/{id}/activate", post(activate))
        .route("/admin/shards", post(add_shards))
        .with_state(node)
}

/// The answer to a change.
#[derive(Debug, Serialize)]
pub struct ChangeResponse {
    /// Whether the change was applied.
    pub applied: bool,
    /// Why not, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

async fn change(node: &StorageNode, command: MetaCommand) -> Response {
    match node.propose_meta(command, 0).await {
        Ok(Ok(())) => Json(ChangeResponse { applied: true, error: None }).into_response(),
        Ok(Err(refused)) => {
            (StatusCode::CONFLICT, Json(ChangeResponse { applied: false, error: Some(refused.to_string()) }))
                .into_response()
        }
        Err(e) => {
            let body = Json(ChangeResponse { applied: false, error: Some(e.to_string()) });
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], body).into_response()
        }
    }
}

async fn drain(State(node): State<Arc<StorageNode>>, Path(id): Path<NodeId>) -> Response {
    change(&node, MetaCommand::SetNodeState { id, state: NodeState::Leaving }).await
}

async fn activate(State(node): State<Arc<StorageNode>>, Path(id): Path<NodeId>) -> Response {
    change(&node, MetaCommand::SetNodeState { id, state: NodeState::Active }).await
}

/// Query of `POST /admin/shards`.
#[derive(Debug, Deserialize)]
pub struct AddShards {
    /// How many shards to add.
    pub add: u32,
}

async fn add_shards(State(node): State<Arc<StorageNode>>, Query(q): Query<AddShards>) -> Response {
    change(&node, MetaCommand::AddShards { count: q.add }).await
}
