//! What every connection and request handler can reach.
use std::sync::Arc;

use rbee_proto::config::AgentConfig;
use rbee_proto::session::{Event, Telemetry};
use tokio::sync::{broadcast, watch, Semaphore};

/// What every session handler can reach.
pub struct Shared {
    /// The agent's configuration.
    pub config: Arc<AgentConfig>,
    /// The name this node reports.
    pub node: String,
    /// The node's session token (every client presents it or an operator's).
    pub token: String,
    /// The operators' tokens file (`rbee-agent token add`), read at each login.
    pub operators: std::path::PathBuf,
    /// The workers.
    pub supervisor: Arc<crate::workers::Supervisor>,
    /// The audit log.
    pub audit: Arc<crate::audit::Audit>,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Events pushed to subscribed sessions.
    pub events: broadcast::Sender<Event>,
    /// The latest telemetry sample.
    pub telemetry: watch::Receiver<Telemetry>,
    /// The server's bounds.
    pub limits: super::limits::Limits,
    /// One permit per authenticated session (`limits.sessions` in all).
    pub sessions: Arc<Semaphore>,
}
