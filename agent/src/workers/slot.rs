//! One worker's slot: everything the supervisor knows about a worker, behind a single lock.
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use rbee_proto::session::{ServerMsg, SpawnSpec, WorkerInfo};
use rbee_proto::{RequestId, WorkerId, WorkerState};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::admission::Reservation;

/// Lines of worker stderr kept in memory per worker.
pub(crate) const LOG_LINES: usize = 1000;

/// Where a session wants the tokens of one inference.
pub(crate) struct PendingInfer {
    pub client_id: RequestId,
    pub out: mpsc::Sender<ServerMsg>,
    pub started: Instant,
    pub tokens: u64,
}

/// What an operator asks of a worker's lifecycle task.
pub(crate) enum Control {
    /// Stop for good; the sender is answered once the process is gone.
    Stop(oneshot::Sender<()>),
    /// Stop and start again with a fresh restart budget.
    Restart,
}

/// A worker: its fixed identity, the channel to its lifecycle task, and its mutable state.
pub(crate) struct Slot {
    pub id: WorkerId,
    pub spec: SpawnSpec,
    pub control: mpsc::Sender<Control>,
    state: Mutex<SlotState>,
}

/// The mutable part of a slot. Held only for short, non-blocking updates; never across `.await`.
pub(crate) struct SlotState {
    pub info: WorkerInfo,
    pub last_heartbeat: Option<Instant>,
    /// Frames to the running process; `None` while no process runs.
    pub stdin: Option<mpsc::Sender<String>>,
    /// Inferences sent to the worker and not finished, by worker-side request id.
    pub pending: HashMap<u64, PendingInfer>,
    pub log: VecDeque<String>,
    /// Log lines pushed since the slot was made (`log` keeps the last of them): the cursor
    /// `read_log` hands out.
    pub log_total: u64,
    /// Part of the desired state (false from the moment a kill is being saved).
    pub wanted: bool,
    /// Memory promised by admission: its estimate less what the worker is measured to hold;
    /// dropped when it is killed or its run ends.
    pub reservation: Option<Reservation>,
}

impl Slot {
    pub(crate) fn new(
        id: WorkerId,
        spec: SpawnSpec,
        control: mpsc::Sender<Control>,
        reservation: Option<Reservation>,
    ) -> Self {
        let info = WorkerInfo {
            id: id.clone(),
            model: spec.model.clone(),
            device: spec.device.clone(),
            state: WorkerState::Starting,
            pid: None,
            restarts: 0,
            last_exit: None,
            summary: None,
            heartbeat_age_ms: None,
            tokens_per_s: 0.0,
            rss_bytes: 0,
            vram_bytes: 0,
            in_flight: 0,
            detail: String::new(),
        };
        Self {
            id,
            spec,
            control,
            state: Mutex::new(SlotState {
                info,
                last_heartbeat: None,
                stdin: None,
                pending: HashMap::new(),
                log: VecDeque::with_capacity(LOG_LINES),
                log_total: 0,
                wanted: true,
                reservation,
            }),
        }
    }

    /// The slot's state. A panic elsewhere while it was held leaves plain data behind, so a
    /// poisoned lock is still used.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `list_workers` and events show of this worker now.
    pub(crate) fn snapshot(&self) -> WorkerInfo {
        self.lock().snapshot()
    }

    pub(crate) fn worker_state(&self) -> WorkerState {
        self.lock().info.state
    }
}

impl SlotState {
    pub(crate) fn snapshot(&self) -> WorkerInfo {
        let mut info = self.info.clone();
        info.heartbeat_age_ms = self.last_heartbeat.map(|t| t.elapsed().as_millis() as u64);
        info.in_flight = self.pending.len() as u32;
        info
    }

    pub(crate) fn push_log(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
        self.log_total += 1;
    }
}
