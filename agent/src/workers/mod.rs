//! Worker supervision: the registry of workers and the API sessions call (spawn, kill, restart,
//! list, route an inference, cancel). One task per worker ([`lifecycle`]) owns its process, reads
//! its frames, watches its heartbeats and restarts it with backoff behind a circuit breaker.
//!
//! | module        | job                                                           |
//! |---------------|---------------------------------------------------------------|
//! | `slot`        | one worker's state behind one lock                            |
//! | `lifecycle`   | the per-worker state machine and restart policy               |
//! | `run`         | one run of a process: pipes, watchdog, stop, how it ended     |
//! | `frames`      | frames from a worker: state, heartbeats, tokens to sessions   |
//! | [`process`]   | the launch seam: real `rbee-worker` processes or a stand-in   |
//! | `admission`   | may this spawn run here (model, device, memory)               |
//! | `routing`     | which worker serves an inference                              |
//! | `logs`        | worker stderr: in-memory tail and rotated file                |
mod admission;
mod core;
mod frames;
mod lifecycle;
mod lines;
mod load_timeout;
mod logs;
pub mod process;
mod routing;
mod run;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rbee_proto::config::AgentConfig;
use rbee_proto::frame::encode;
use rbee_proto::session::{Event, ServerMsg, SpawnSpec, Telemetry, WorkerInfo};
use rbee_proto::worker::ToWorker;
use rbee_proto::{
    ErrorCode, ProtoError, RequestId, SamplingParams, UnixMillis, WorkerId, WorkerState,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::statedir::{Desired, DesiredWorker, StateDir};
use crate::telemetry::Collector;
use slot::{Control, PendingInfer, Slot};

/// What a worker is asked to continue: raw text, or a conversation it renders with the model's
/// own chat template.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Text to continue as is (`Infer`).
    Text(String),
    /// Turns of a conversation (`Chat`).
    Chat(Vec<rbee_proto::ChatMessage>),
}

/// What the supervisor is built from.
pub struct Parts {
    /// The agent's configuration (heartbeat, restart policy, queue, admission headroom).
    pub config: Arc<AgentConfig>,
    /// How worker processes are started.
    pub launcher: Arc<dyn process::Launcher>,
    /// Where desired state and worker logs go.
    pub state: Arc<StateDir>,
    /// Lifecycle events worth keeping (spawn, kill, restarts, breaker).
    pub audit: Arc<Audit>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Worker state changes go out here to subscribed sessions.
    pub events: broadcast::Sender<Event>,
    /// Free memory for admission.
    pub collector: Arc<Mutex<Collector>>,
}

/// The registry of workers and everything sessions can ask of them.
pub struct Supervisor {
    core: Arc<core::Core>,
    admission: admission::Admission,
    workers: Mutex<BTreeMap<WorkerId, Arc<Slot>>>,
    next_worker: AtomicU64,
    next_request: AtomicU64,
    /// Held while the desired state is computed and saved (see `save_desired`).
    desired: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
}

impl Supervisor {
    /// A supervisor with no workers yet.
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            config,
            launcher,
            state,
            audit,
            metrics,
            events,
            collector,
        } = parts;
        Arc::new(Self {
            admission: admission::Admission::new(config.clone(), collector),
            core: Arc::new(core::Core {
                cfg: config,
                launcher,
                state,
                audit,
                metrics,
                events,
                shutdown: CancellationToken::new(),
            }),
            workers: Mutex::new(BTreeMap::new()),
            next_worker: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            desired: tokio::sync::Mutex::new(()),
            tracker: TaskTracker::new(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, BTreeMap<WorkerId, Arc<Slot>>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bring back what the operator asked for before the last stop.
    pub fn restore(self: &Arc<Self>, desired: Desired) {
        for w in desired.workers {
            if let Some(n) = w.id.strip_prefix('w').and_then(|n| n.parse::<u64>().ok()) {
                self.next_worker.fetch_max(n + 1, Ordering::SeqCst);
            }
            tracing::info!(worker_id = %w.id, model = %w.spec.model, "restoring desired worker");
            self.start_slot(w.id, w.spec, None);
        }
    }

    /// Write the desired state: every wanted worker, plus `adding`. Call with `desired` held,
    /// so saves land in the order of the changes they record.
    async fn save_desired(&self, adding: Option<DesiredWorker>) -> Result<(), ProtoError> {
        let mut workers: Vec<DesiredWorker> = self
            .registry()
            .values()
            .filter(|s| s.lock().wanted)
            .map(|s| DesiredWorker {
                id: s.id.clone(),
                spec: s.spec.clone(),
            })
            .collect();
        workers.extend(adding);
        let state = self.core.state.clone();
        let saved = tokio::task::spawn_blocking(move || state.save_desired(&Desired { workers }))
            .await
            .map_err(|e| ProtoError::new(ErrorCode::Internal, format!("save task: {e}")))?;
        saved.map_err(|e| {
            tracing::error!("cannot save desired state: {e}");
            self.core.metrics.error("desired_state_save");
            ProtoError::new(
                ErrorCode::Internal,
                format!("cannot save the desired state: {e}"),
            )
        })
    }

    /// Admit and start a worker; it is remembered in the desired state before it starts. When
    /// that cannot be saved, nothing starts and the caller learns why.
    pub async fn spawn(
        self: &Arc<Self>,
        spec: SpawnSpec,
        peer: Option<String>,
    ) -> Result<WorkerInfo, ProtoError> {
        if self.core.shutdown.is_cancelled() {
            return Err(ProtoError::new(
                ErrorCode::ShuttingDown,
                "agent is shutting down",
            ));
        }
        let refused = |e: ProtoError, peer| {
            self.core.metrics.error(e.code.as_str());
            let line = format!("{}: {}", spec.model, e.message);
            self.core.audit.record("spawn_refused", peer, None, line);
            e
        };
        let admitted = self
            .admission
            .admit(&spec)
            .map_err(|e| refused(e, peer.clone()))?;
        // Restarts and restores start from what the store resolved, not what was typed.
        let spec = SpawnSpec {
            model: admitted.reference,
            device: admitted.device,
            ..spec
        };
        let id = format!("w{}", self.next_worker.fetch_add(1, Ordering::SeqCst));
        let order = self.desired.lock().await;
        let adding = DesiredWorker {
            id: id.clone(),
            spec: spec.clone(),
        };
        if let Err(e) = self.save_desired(Some(adding)).await {
            let e = ProtoError::new(e.code, format!("{}; the worker was not started", e.message));
            return Err(refused(e, peer));
        }
        let slot = self.start_slot(id.clone(), spec.clone(), Some(admitted.reservation));
        drop(order);
        self.core.audit.record(
            "spawn",
            peer,
            Some(id),
            format!("model={} device={}", spec.model, spec.device),
        );
        let info = slot.lock().info.clone();
        Ok(info)
    }

    fn start_slot(
        self: &Arc<Self>,
        id: WorkerId,
        spec: SpawnSpec,
        reservation: Option<admission::Reservation>,
    ) -> Arc<Slot> {
        let (ctl_tx, ctl_rx) = mpsc::channel(8);
        let slot = Arc::new(Slot::new(id.clone(), spec, ctl_tx, reservation));
        self.registry().insert(id, slot.clone());
        let life = lifecycle::Lifecycle::new(self.core.clone(), slot.clone(), ctl_rx);
        self.tracker.spawn(life.run());
        slot
    }

    /// Every worker as `list_workers` shows it.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.registry().values().map(|s| s.snapshot()).collect()
    }

    /// Pids of running workers, for naming GPU processes in telemetry.
    pub fn pids(&self) -> HashMap<u32, WorkerId> {
        self.registry()
            .values()
            .filter_map(|s| s.lock().info.pid.map(|p| (p, s.id.clone())))
            .collect()
    }

    /// Fill per-worker resource figures from a telemetry sample.
    pub fn apply_telemetry(&self, t: &Telemetry) {
        let mut vram: HashMap<u32, u64> = HashMap::new();
        for g in &t.gpus {
            for p in &g.processes {
                *vram.entry(p.pid).or_default() += p.used_bytes;
            }
        }
        for s in self.registry().values() {
            let mut st = s.lock();
            if let Some(pid) = st.info.pid {
                st.info.rss_bytes = rbee_host::proc::rss_bytes(pid).unwrap_or(st.info.rss_bytes);
                st.info.vram_bytes = vram.get(&pid).copied().unwrap_or(0);
                // A GPU worker's promise shrinks by what NVML sees it hold.
                if let Some(r) = st.reservation.as_ref().filter(|r| r.on_gpu()) {
                    if st.info.vram_bytes > 0 {
                        r.measured(st.info.vram_bytes);
                    }
                }
            }
        }
    }

    /// How many workers are in each state, for `/metrics`.
    pub fn states(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for s in self.registry().values() {
            *m.entry(s.worker_state().to_string()).or_default() += 1;
        }
        m
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, ProtoError> {
        self.registry()
            .get(id)
            .cloned()
            .ok_or_else(|| routing::not_found(id))
    }

    /// Stop a worker for good and forget it. It leaves the desired state first: when that
    /// cannot be saved, the worker keeps running and the caller learns why.
    pub async fn kill(&self, id: &str, peer: Option<String>) -> Result<(), ProtoError> {
        let slot = self.slot(id)?;
        {
            let _order = self.desired.lock().await;
            let was = std::mem::replace(&mut slot.lock().wanted, false);
            if let Err(e) = self.save_desired(None).await {
                slot.lock().wanted = was;
                let msg = format!("{}; the worker was left running", e.message);
                self.core
                    .audit
                    .record("kill_failed", peer, Some(id.into()), msg.clone());
                return Err(ProtoError::new(e.code, msg));
            }
        }
        let (tx, rx) = oneshot::channel();
        if slot.control.send(Control::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.registry().remove(id);
        slot.lock().reservation = None;
        self.core.audit.record(
            "kill",
            peer,
            Some(id.into()),
            format!("model={}", slot.spec.model),
        );
        Ok(())
    }

    /// Restart a worker with a fresh restart budget.
    pub async fn restart(&self, id: &str, peer: Option<String>) -> Result<(), ProtoError> {
        let slot = self.slot(id)?;
        slot.control.send(Control::Restart).await.map_err(|_| {
            ProtoError::new(ErrorCode::WorkerGone, format!("worker `{id}` is stopping"))
        })?;
        self.core.audit.record(
            "restart",
            peer,
            Some(id.into()),
            "restart requested by operator",
        );
        Ok(())
    }

    /// The last `lines` lines of a worker's stderr.
    pub fn tail_log(&self, id: &str, lines: usize) -> Result<Vec<String>, ProtoError> {
        let slot = self.slot(id)?;
        let st = slot.lock();
        let skip = st.log.len().saturating_sub(lines);
        Ok(st.log.iter().skip(skip).cloned().collect())
    }

    /// Route an inference to a worker. Returns (worker id, worker-side request id) for cancel.
    #[allow(clippy::too_many_arguments)]
    pub fn infer(
        &self,
        out: mpsc::Sender<ServerMsg>,
        client_id: RequestId,
        worker: Option<&str>,
        model: Option<&str>,
        input: Prompt,
        params: SamplingParams,
        deadline: Option<UnixMillis>,
    ) -> Result<(WorkerId, u64), ProtoError> {
        let registry = self.registry();
        let slot = match routing::pick(&registry, worker, model) {
            // `model` may be a name as `models list` prints it: resolve it as a spawn does and
            // look again (only on a miss, so the usual request pays no store lookup).
            Err(e) if e.code == ErrorCode::NotFound && worker.is_none() => {
                let store = rbee_store::Store::new(self.core.cfg.model_dirs.clone());
                let found = model.and_then(|m| store.find(m).ok()).ok_or(e.clone())?;
                routing::pick(&registry, None, Some(&found.reference)).map_err(|_| e)?
            }
            picked => picked?,
        };
        let req = self.next_request.fetch_add(1, Ordering::SeqCst);
        let stdin = {
            let mut st = slot.lock();
            let stdin = st.stdin.clone().ok_or_else(|| {
                ProtoError::new(
                    ErrorCode::WorkerGone,
                    format!("worker `{}` is not running", slot.id),
                )
            })?;
            st.pending.insert(
                req,
                PendingInfer {
                    client_id,
                    out,
                    started: tokio::time::Instant::now(),
                    tokens: 0,
                },
            );
            stdin
        };
        let frame = match input {
            Prompt::Text(prompt) => encode(&ToWorker::Generate {
                id: req,
                prompt,
                params,
                deadline,
            }),
            Prompt::Chat(messages) => encode(&ToWorker::Chat {
                id: req,
                messages,
                params,
                deadline,
            }),
        };
        if stdin.try_send(frame).is_err() {
            slot.lock().pending.remove(&req);
            return Err(ProtoError::new(
                ErrorCode::Busy,
                format!("worker `{}` is not accepting requests", slot.id),
            ));
        }
        self.core.update(&slot, |i| i.state = WorkerState::Busy);
        Ok((slot.id.clone(), req))
    }

    /// Ask a worker to stop one request; false if it is not in flight there.
    pub fn cancel(&self, worker: &str, req: u64) -> bool {
        let Ok(slot) = self.slot(worker) else {
            return false;
        };
        let stdin = {
            let st = slot.lock();
            if !st.pending.contains_key(&req) {
                return false;
            }
            st.stdin.clone()
        };
        match stdin {
            Some(tx) => tx.try_send(encode(&ToWorker::Cancel { id: req })).is_ok(),
            None => false,
        }
    }

    /// Whether a worker still works on request `req`.
    pub fn is_pending(&self, worker: &str, req: u64) -> bool {
        self.slot(worker)
            .map(|s| s.lock().pending.contains_key(&req))
            .unwrap_or(false)
    }

    /// Stop every worker (they stay in the desired state) and wait for their tasks.
    pub async fn shutdown(&self) {
        self.core.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
