//! Generated gRPC code for Spindle's internal APIs (`spindle/*.proto`), and the protobuf
//! messages of Tempo's query API that Grafana decodes.

/// Internal storage and Raft APIs (`spindle/storage.proto`).
pub mod storage {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("spindle.storage.v1");
}

pub mod tempo;
