//! Small types every part of Spindle shares, and their text forms (durations, Tempo's hex ids,
//! tenant ids), and the trait through which accepted spans reach the metrics generator. A leaf
//! crate: it depends on no other Spindle crate, so anything may use it.

pub mod duration;
pub mod ids;
pub mod tee;
pub mod tenant;

pub use duration::{format_duration, parse_duration, parse_std_duration, DurationError};
pub use ids::trace_id_hex;
pub use tee::SpanTee;
pub use tenant::{InvalidTenant, TenantId};
