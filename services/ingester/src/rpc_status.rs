//! `google.rpc.Status` and `google.rpc.RetryInfo`, which OTLP uses for error bodies and for
//! telling clients when to retry.

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Details (`google.protobuf.Any`).
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    /// Type URL.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<Duration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Duration {
    /// Seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A `RetryInfo` detail asking the client to wait `seconds`.
pub fn retry_after(seconds: i64) -> Any {
    use prost::Message;
    Any {
        type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
        value: RetryInfo { retry_delay: Some(Duration { seconds, nanos: 0 }) }.encode_to_vec(),
    }
}
