//! The bounds of the session server.
use std::time::Duration;

/// Sessions get this long to send their request head, and then `Hello`.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
