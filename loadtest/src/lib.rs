//! Load generation for Spindle: realistic OTLP traces ([`traffic`]), sending them with retries
//! ([`export`]) and reading a sample back ([`verify`]). Binaries: `loadsim` (paced realistic load
//! with verification) and `ackbench` (acknowledgement latency and throughput of pre-encoded
//! requests).

pub mod export;
pub mod traffic;
pub mod verify;
