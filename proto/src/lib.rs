//! Generated gRPC code for Spindle's internal APIs (`spindle/*.proto`), and the protobuf
//! messages of Tempo's query API that Grafana decodes.

/// Internal APIs between roles: storage data plane, cluster control plane, Raft transport
/// (`spindle/storage.proto`). `bytes` fields are `bytes::Bytes`, so payloads are not copied.
pub mod storage {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("spindle.storage.v1");
}

pub mod tempo;

pub mod prometheus;

/// The metrics generator's push API (`spindle/generator.proto`): ingesters hand it the spans
/// of the traces it owns.
pub mod generator {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("spindle.generator.v1");
}
