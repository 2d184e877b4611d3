//! Generated gRPC code for Spindle's internal APIs (`spindle/*.proto`), and the protobuf
//! messages of Tempo's query API that Grafana decodes.

/// Internal APIs between roles: storage data plane, cluster control plane, Raft transport
/// (`spindle/storage.proto`). `bytes` fields are `bytes::Bytes`, so payloads are not copied.
pub mod storage {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("spindle.storage.v1");
}

pub mod tempo;
