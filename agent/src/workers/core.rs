//! What every worker task shares with the registry: the configuration, the launcher, and the
//! places lifecycle changes are reported to (events, audit, metrics, desired-state directory).
use std::sync::Arc;

use rbee_proto::config::AgentConfig;
use rbee_proto::session::{Event, WorkerInfo};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::process::Launcher;
use super::slot::Slot;
use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::statedir::StateDir;

pub(crate) struct Core {
    pub cfg: Arc<AgentConfig>,
    pub launcher: Arc<dyn Launcher>,
    pub state: Arc<StateDir>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<Event>,
    /// Cancelled when the agent stops: every worker is stopped (and stays desired).
    pub shutdown: CancellationToken,
}

impl Core {
    /// Change a worker's info and tell subscribed sessions.
    pub(crate) fn update(&self, slot: &Slot, f: impl FnOnce(&mut WorkerInfo)) {
        let worker = {
            let mut st = slot.lock();
            f(&mut st.info);
            st.snapshot()
        };
        let _ = self.events.send(Event::WorkerState { worker });
    }
}
