//! Kept only for `pull.rs`, which still imports the byte formatter from here; the supervisor
//! itself now lives in the `workers` module and the formatter in `rbee_proto::fmt`. Goes away
//! when `pull.rs` imports `rbee_proto::fmt::bytes` itself (asked in notes/requests.md).
pub use rbee_proto::fmt::bytes as human_bytes;
