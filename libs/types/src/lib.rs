//! Small types every part of Spindle shares, and their text forms (durations, Tempo's hex ids). A leaf crate: it depends on
//! no other Spindle crate, so anything may use it.

pub mod duration;
pub mod ids;

pub use duration::{format_duration, parse_duration, parse_std_duration, DurationError};
pub use ids::trace_id_hex;
