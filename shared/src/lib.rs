//! `rbee-proto`: everything that crosses a process boundary in rbee.
//!
//! Owns the wire types for the two links (agent ⇄ worker over stdio, dashboard/script ⇄ agent over
//! WebSocket), their framing and decoding rules, the protocol version, ids, the configuration
//! schema, the restart/backoff policy, the state-dir file names and how sizes and ages are written
//! for people. It must stay free of I/O: binaries do the talking (through `rbee-client` for agent
//! sessions), this crate only says what the words mean.
#![warn(missing_docs)]

pub mod config;
/// Error codes and the error value every reply can carry.
pub mod error;
pub mod fmt;
pub mod frame;
pub mod policy;
pub mod session;
pub mod statedir;
pub mod types;
pub mod worker;

pub use error::{ErrorCode, ProtoError};
pub use types::*;

/// Version of the wire protocol. Bumped on every incompatible change; both handshakes carry it and
/// a mismatch is refused with both numbers named.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame (one JSON document) any rbee process accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Read buffer of each WebSocket, in bytes. Frames are small (a token, a heartbeat) and the
/// WebSocket library zero-fills the free part of this buffer before every read: at its default
/// of 128 KiB that memset was the largest single cost of a dashboard following 100 agents.
/// Larger frames still arrive whole, over several reads.
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
