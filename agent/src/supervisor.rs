//! Worker supervision: one task per worker owns its child process, reads its frames, watches its
//! heartbeats, restarts it with backoff behind a circuit breaker, and routes its tokens to the
//! sessions that asked for them.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_proto::config::AgentConfig;
use rbee_proto::frame::{decode_line, encode};
use rbee_proto::policy::{AfterFailure, CircuitBreaker};
use rbee_proto::session::{Event, Reply, ServerMsg, SpawnSpec, WorkerInfo};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{
    ErrorCode, ProtoError, RequestId, SamplingParams, UnixMillis, WorkerId, WorkerState,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::models;
use crate::statedir::{Desired, DesiredWorker, StateDir};
use crate::telemetry::Collector;

/// Lines of worker stderr kept in memory per worker.
const LOG_LINES: usize = 1000;
/// Exit code `rbee-worker` uses when its model cannot be loaded: retrying will not help.
const EXIT_MODEL_LOAD: i32 = 3;

/// Where a session wants the tokens of one inference.
struct PendingInfer {
    client_id: RequestId,
    out: mpsc::Sender<ServerMsg>,
    started: Instant,
    tokens: u64,
}

enum Control {
    Stop(oneshot::Sender<()>),
    Restart,
}

struct WorkerSlot {
    id: WorkerId,
    spec: SpawnSpec,
    info: Mutex<WorkerInfo>,
    last_heartbeat: Mutex<Option<Instant>>,
    stdin: Mutex<Option<mpsc::Sender<String>>>,
    pending: Mutex<HashMap<u64, PendingInfer>>,
    control: mpsc::Sender<Control>,
    log: Mutex<VecDeque<String>>,
}

/// Everything the supervisor needs from the rest of the agent.
pub struct Supervisor {
    cfg: Arc<AgentConfig>,
    worker_bin: PathBuf,
    state: Arc<StateDir>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    collector: Arc<Mutex<Collector>>,
    workers: Mutex<BTreeMap<WorkerId, Arc<WorkerSlot>>>,
    next_worker: AtomicU64,
    next_request: AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtoError {
    ProtoError::new(code, msg)
}

pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<AgentConfig>,
        worker_bin: PathBuf,
        state: Arc<StateDir>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        events: broadcast::Sender<Event>,
        collector: Arc<Mutex<Collector>>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            worker_bin,
            state,
            audit,
            metrics,
            events,
            collector,
            workers: Mutex::new(BTreeMap::new()),
            next_worker: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            shutdown,
            tracker: TaskTracker::new(),
        })
    }

    /// Bring back what the operator asked for before the last stop.
    pub fn restore(self: &Arc<Self>, desired: Desired) {
        for w in desired.workers {
            if let Some(n) = w.id.strip_prefix('w').and_then(|n| n.parse::<u64>().ok()) {
                self.next_worker.fetch_max(n + 1, Ordering::SeqCst);
            }
            tracing::info!(worker_id = %w.id, model = %w.spec.model, "restoring desired worker");
            self.start_slot(w.id, w.spec);
        }
    }

    fn persist(&self) {
        let workers = self.workers.lock().unwrap();
        let desired = Desired {
            workers: workers
                .values()
                .map(|s| DesiredWorker {
                    id: s.id.clone(),
                    spec: s.spec.clone(),
                })
                .collect(),
        };
        drop(workers);
        if let Err(e) = self.state.save_desired(&desired) {
            tracing::error!("cannot persist desired state: {e}");
        }
    }

    /// Check a spawn request up front: model reference, device, and memory.
    fn admit(&self, spec: &SpawnSpec) -> Result<(), ProtoError> {
        let device = spec.device.trim();
        let gpu_index = if device == "cpu" {
            None
        } else if let Some(n) = device
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<u32>().ok())
            .or((device == "cuda").then_some(0))
        {
            Some(n)
        } else {
            return Err(err(
                ErrorCode::BadRequest,
                format!("device `{device}` is not cpu or cuda:N"),
            ));
        };
        let size = if spec.model.starts_with("hf:") {
            if let Some(Err(why)) = rbee_proto::types::HubRef::parse(&spec.model) {
                return Err(err(ErrorCode::BadRequest, why));
            }
            // Known once pulled; otherwise the worker resolves it through the HF cache itself.
            crate::pull::cached_size(&spec.model).unwrap_or(0)
        } else {
            let path = models::check_allowed(Path::new(&spec.model), &self.cfg.model_dirs)?;
            models::model_size(&path)
        };
        let need = size + self.cfg.admission_headroom_bytes;
        let mut c = self.collector.lock().unwrap();
        match gpu_index {
            None => {
                let free = c.available_memory();
                if size > 0 && need > free {
                    return Err(err(
                        ErrorCode::InsufficientMemory,
                        format!(
                            "model needs {} plus {} headroom but only {} of RAM is free",
                            human_bytes(size),
                            human_bytes(self.cfg.admission_headroom_bytes),
                            human_bytes(free)
                        ),
                    ));
                }
            }
            Some(i) => {
                if !c.has_gpu() {
                    return Err(err(ErrorCode::BadRequest, format!("no GPU on this node (NVIDIA driver not available); cannot use {device}")));
                }
                let free = c.gpu_free_bytes(i).ok_or_else(|| {
                    err(
                        ErrorCode::BadRequest,
                        format!("GPU {i} does not exist on this node"),
                    )
                })?;
                if size > 0 && need > free {
                    return Err(err(
                        ErrorCode::InsufficientMemory,
                        format!(
                            "model needs {} plus {} headroom but GPU {i} has {} free",
                            human_bytes(size),
                            human_bytes(self.cfg.admission_headroom_bytes),
                            human_bytes(free)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn spawn(
        self: &Arc<Self>,
        spec: SpawnSpec,
        peer: Option<String>,
    ) -> Result<WorkerInfo, ProtoError> {
        if self.shutdown.is_cancelled() {
            return Err(err(ErrorCode::ShuttingDown, "agent is shutting down"));
        }
        if let Err(e) = self.admit(&spec) {
            self.metrics.error(e.code.as_str());
            self.audit.record(
                "spawn_refused",
                peer,
                None,
                format!("{}: {}", spec.model, e.message),
            );
            return Err(e);
        }
        let id = format!("w{}", self.next_worker.fetch_add(1, Ordering::SeqCst));
        let slot = self.start_slot(id.clone(), spec.clone());
        self.persist();
        self.audit.record(
            "spawn",
            peer,
            Some(id),
            format!("model={} device={}", spec.model, spec.device),
        );
        let info = slot.info.lock().unwrap().clone();
        Ok(info)
    }

    fn start_slot(self: &Arc<Self>, id: WorkerId, spec: SpawnSpec) -> Arc<WorkerSlot> {
        let (ctl_tx, ctl_rx) = mpsc::channel(8);
        let slot = Arc::new(WorkerSlot {
            id: id.clone(),
            spec: spec.clone(),
            info: Mutex::new(WorkerInfo {
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
            }),
            last_heartbeat: Mutex::new(None),
            stdin: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            control: ctl_tx,
            log: Mutex::new(VecDeque::with_capacity(LOG_LINES)),
        });
        self.workers.lock().unwrap().insert(id, slot.clone());
        let me = self.clone();
        let s = slot.clone();
        self.tracker
            .spawn(async move { me.supervise(s, ctl_rx).await });
        slot
    }

    fn snapshot(slot: &WorkerSlot) -> WorkerInfo {
        let mut info = slot.info.lock().unwrap().clone();
        info.heartbeat_age_ms = slot
            .last_heartbeat
            .lock()
            .unwrap()
            .map(|t| t.elapsed().as_millis() as u64);
        info.in_flight = slot.pending.lock().unwrap().len() as u32;
        info
    }

    fn update(&self, slot: &WorkerSlot, f: impl FnOnce(&mut WorkerInfo)) {
        {
            let mut info = slot.info.lock().unwrap();
            f(&mut info);
        }
        let _ = self.events.send(Event::WorkerState {
            worker: Self::snapshot(slot),
        });
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        self.workers
            .lock()
            .unwrap()
            .values()
            .map(|s| Self::snapshot(s))
            .collect()
    }

    pub fn pids(&self) -> HashMap<u32, WorkerId> {
        self.workers
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| s.info.lock().unwrap().pid.map(|p| (p, s.id.clone())))
            .collect()
    }

    /// Fill per-worker resource figures from a telemetry sample.
    pub fn apply_telemetry(&self, t: &rbee_proto::session::Telemetry) {
        let mut vram: HashMap<u32, u64> = HashMap::new();
        for g in &t.gpus {
            for p in &g.processes {
                *vram.entry(p.pid).or_default() += p.used_bytes;
            }
        }
        for s in self.workers.lock().unwrap().values() {
            let mut info = s.info.lock().unwrap();
            if let Some(pid) = info.pid {
                info.rss_bytes = proc_rss(pid).unwrap_or(info.rss_bytes);
                info.vram_bytes = vram.get(&pid).copied().unwrap_or(0);
            }
        }
    }

    pub fn states(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for s in self.workers.lock().unwrap().values() {
            *m.entry(s.info.lock().unwrap().state.to_string())
                .or_default() += 1;
        }
        m
    }

    fn slot(&self, id: &str) -> Result<Arc<WorkerSlot>, ProtoError> {
        self.workers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no worker `{id}` on this node"),
                )
            })
    }

    pub async fn kill(&self, id: &str, peer: Option<String>) -> Result<(), ProtoError> {
        let slot = self.slot(id)?;
        let (tx, rx) = oneshot::channel();
        if slot.control.send(Control::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.workers.lock().unwrap().remove(id);
        self.persist();
        self.audit.record(
            "kill",
            peer,
            Some(id.into()),
            format!("model={}", slot.spec.model),
        );
        Ok(())
    }

    pub async fn restart(&self, id: &str, peer: Option<String>) -> Result<(), ProtoError> {
        let slot = self.slot(id)?;
        slot.control
            .send(Control::Restart)
            .await
            .map_err(|_| err(ErrorCode::WorkerGone, format!("worker `{id}` is stopping")))?;
        self.audit.record(
            "restart",
            peer,
            Some(id.into()),
            "restart requested by operator",
        );
        Ok(())
    }

    pub fn tail_log(&self, id: &str, lines: usize) -> Result<Vec<String>, ProtoError> {
        let slot = self.slot(id)?;
        let log = slot.log.lock().unwrap();
        let skip = log.len().saturating_sub(lines);
        Ok(log.iter().skip(skip).cloned().collect())
    }

    /// Route an inference to a worker. Returns (worker id, worker-side request id) for cancel.
    #[allow(clippy::too_many_arguments)]
    pub fn infer(
        &self,
        out: mpsc::Sender<ServerMsg>,
        client_id: RequestId,
        worker: Option<&str>,
        model: Option<&str>,
        prompt: String,
        params: SamplingParams,
        deadline: Option<UnixMillis>,
    ) -> Result<(WorkerId, u64), ProtoError> {
        let slot = match (worker, model) {
            (Some(w), _) => {
                let s = self.slot(w)?;
                let state = s.info.lock().unwrap().state;
                if !state.is_serving() {
                    return Err(err(
                        ErrorCode::Busy,
                        format!("worker `{w}` is {state}, not ready"),
                    ));
                }
                s
            }
            (None, Some(m)) => {
                let workers = self.workers.lock().unwrap();
                let candidates: Vec<_> = workers
                    .values()
                    .filter(|s| {
                        let info = s.info.lock().unwrap();
                        let name_match =
                            info.summary.as_ref().map(|x| x.name == m).unwrap_or(false);
                        info.state.is_serving()
                            && (s.spec.model == m
                                || name_match
                                || Path::new(&s.spec.model)
                                    .file_name()
                                    .and_then(|f| f.to_str())
                                    == Some(m))
                    })
                    .cloned()
                    .collect();
                candidates
                    .into_iter()
                    .min_by_key(|s| s.pending.lock().unwrap().len())
                    .ok_or_else(|| {
                        err(
                            ErrorCode::NotFound,
                            format!("no ready worker serves `{m}` on this node"),
                        )
                    })?
            }
            (None, None) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "infer needs `worker` or `model`",
                ))
            }
        };
        let stdin = slot.stdin.lock().unwrap().clone().ok_or_else(|| {
            err(
                ErrorCode::WorkerGone,
                format!("worker `{}` is not running", slot.id),
            )
        })?;
        let req = self.next_request.fetch_add(1, Ordering::SeqCst);
        slot.pending.lock().unwrap().insert(
            req,
            PendingInfer {
                client_id,
                out,
                started: Instant::now(),
                tokens: 0,
            },
        );
        let frame = encode(&ToWorker::Generate {
            id: req,
            prompt,
            params,
            deadline,
        });
        if stdin.try_send(frame).is_err() {
            slot.pending.lock().unwrap().remove(&req);
            return Err(err(
                ErrorCode::Busy,
                format!("worker `{}` is not accepting requests", slot.id),
            ));
        }
        self.update(&slot, |i| i.state = WorkerState::Busy);
        Ok((slot.id.clone(), req))
    }

    pub fn cancel(&self, worker: &str, req: u64) -> bool {
        let Ok(slot) = self.slot(worker) else {
            return false;
        };
        if !slot.pending.lock().unwrap().contains_key(&req) {
            return false;
        }
        let stdin = slot.stdin.lock().unwrap().clone();
        match stdin {
            Some(tx) => tx.try_send(encode(&ToWorker::Cancel { id: req })).is_ok(),
            None => false,
        }
    }

    pub fn is_pending(&self, worker: &str, req: u64) -> bool {
        self.slot(worker)
            .map(|s| s.pending.lock().unwrap().contains_key(&req))
            .unwrap_or(false)
    }

    /// Stop every worker (they stay in the desired state) and wait for their tasks.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn command(&self, spec: &SpawnSpec) -> Command {
        let mut cmd = Command::new(&self.worker_bin);
        cmd.arg("--model")
            .arg(&spec.model)
            .arg("--device")
            .arg(&spec.device);
        cmd.arg("--heartbeat-ms")
            .arg(self.cfg.heartbeat_ms.to_string());
        cmd.arg("--queue").arg(self.cfg.worker_queue.to_string());
        if let Some(t) = spec.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL this child when
        // the agent dies, so no worker outlives its agent even after `kill -9`.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        cmd
    }

    async fn supervise(self: Arc<Self>, slot: Arc<WorkerSlot>, mut ctl: mpsc::Receiver<Control>) {
        let mut breaker = CircuitBreaker::default();
        let mut restarts: u32 = 0;
        loop {
            let outcome = self.run_once(&slot, &mut ctl).await;
            let reason = outcome.reason.clone();
            match outcome.kind {
                OutcomeKind::Stopped(ack) => {
                    self.update(&slot, |i| {
                        i.state = WorkerState::Exited;
                        i.pid = None;
                        i.last_exit = Some(reason);
                    });
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                OutcomeKind::RestartRequested => {
                    breaker.reset();
                    restarts = 0;
                    self.update(&slot, |i| {
                        i.restarts = 0;
                        i.last_exit = Some(reason);
                    });
                    continue;
                }
                OutcomeKind::LoadFailed => {
                    self.audit
                        .record("load_failed", None, Some(slot.id.clone()), reason.clone());
                    self.update(&slot, |i| {
                        i.state = WorkerState::Failed;
                        i.pid = None;
                        i.last_exit = Some(reason.clone());
                        i.detail = reason;
                    });
                }
                OutcomeKind::Crashed => {
                    self.metrics.error("worker_crash");
                    self.update(&slot, |i| {
                        i.state = WorkerState::Crashed;
                        i.pid = None;
                        i.last_exit = Some(reason.clone());
                    });
                    match breaker.on_failure(&self.cfg.restart, restarts, Instant::now()) {
                        AfterFailure::RestartIn(delay) => {
                            self.update(&slot, |i| {
                                i.state = WorkerState::BackingOff;
                                i.detail = format!("restart in {:.1}s", delay.as_secs_f64());
                            });
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = self.shutdown.cancelled() => {
                                    self.update(&slot, |i| { i.state = WorkerState::Exited; i.detail.clear(); });
                                    return;
                                }
                                c = ctl.recv() => match c {
                                    Some(Control::Stop(ack)) => {
                                        self.update(&slot, |i| { i.state = WorkerState::Exited; i.detail.clear(); });
                                        let _ = ack.send(());
                                        return;
                                    }
                                    Some(Control::Restart) => { breaker.reset(); restarts = 0; continue; }
                                    None => return,
                                },
                            }
                            restarts += 1;
                            self.metrics.restart();
                            self.audit.record(
                                "auto_restart",
                                None,
                                Some(slot.id.clone()),
                                format!("attempt {restarts} after: {reason}"),
                            );
                            self.update(&slot, |i| i.restarts = restarts);
                            continue;
                        }
                        AfterFailure::BreakerOpen => {
                            let msg = format!(
                                "circuit breaker open: {} failures within {} s; last: {reason}",
                                self.cfg.restart.breaker_failures,
                                self.cfg.restart.breaker_window_secs
                            );
                            self.audit.record(
                                "breaker_open",
                                None,
                                Some(slot.id.clone()),
                                msg.clone(),
                            );
                            self.update(&slot, |i| {
                                i.state = WorkerState::Failed;
                                i.detail = msg;
                            });
                        }
                        AfterFailure::GiveUp => {
                            let msg = format!("gave up after {restarts} restarts; last: {reason}");
                            self.audit
                                .record("gave_up", None, Some(slot.id.clone()), msg.clone());
                            self.update(&slot, |i| {
                                i.state = WorkerState::Failed;
                                i.detail = msg;
                            });
                        }
                    }
                }
            }
            // Failed: wait for the operator.
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                c = ctl.recv() => match c {
                    Some(Control::Stop(ack)) => {
                        self.update(&slot, |i| i.state = WorkerState::Exited);
                        let _ = ack.send(());
                        return;
                    }
                    Some(Control::Restart) => {
                        breaker.reset();
                        restarts = 0;
                        self.update(&slot, |i| { i.restarts = 0; i.detail.clear(); });
                    }
                    None => return,
                },
            }
        }
    }

    /// Start the worker process once and follow it until it ends.
    async fn run_once(&self, slot: &Arc<WorkerSlot>, ctl: &mut mpsc::Receiver<Control>) -> Outcome {
        self.update(slot, |i| {
            i.state = WorkerState::Starting;
            i.summary = None;
            i.detail.clear();
        });
        *slot.last_heartbeat.lock().unwrap() = None;
        let spawned_at = Instant::now();
        let mut child = match self.command(&slot.spec).spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::crashed(format!(
                    "cannot start {}: {e}",
                    self.worker_bin.display()
                ));
            }
        };
        let pid = child.id();
        self.update(slot, |i| i.pid = pid);
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut stdin = child.stdin.take().expect("piped");

        let (in_tx, mut in_rx) = mpsc::channel::<String>(self.cfg.worker_queue * 2 + 16);
        let _ = in_tx.try_send(encode(&ToWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
        }));
        *slot.stdin.lock().unwrap() = Some(in_tx.clone());
        let writer = tokio::spawn(async move {
            while let Some(mut line) = in_rx.recv().await {
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let log_task = tokio::spawn(collect_log(
            slot.clone(),
            self.state.log_path(&slot.id),
            stderr,
        ));

        let mut lines = ByteLines::new(stdout);
        let hb_limit = Duration::from_millis(self.cfg.heartbeat_ms * 2);
        let mut watchdog = tokio::time::interval(Duration::from_millis(
            (self.cfg.heartbeat_ms / 4).clamp(20, 500),
        ));
        let mut load_error: Option<String> = None;
        let mut hung: Option<String> = None;
        let mut stop: Option<(Option<oneshot::Sender<()>>, bool)> = None; // (ack, restart?)
        let mut stdout_open = true;

        let status = loop {
            tokio::select! {
                line = lines.next_line(), if stdout_open => match line {
                    Ok(Some(line)) => self.on_frame(slot, &line, spawned_at, &mut load_error).await,
                    _ => stdout_open = false,
                },
                st = child.wait() => break st,
                _ = watchdog.tick() => {
                    let state = slot.info.lock().unwrap().state;
                    let since = *slot.last_heartbeat.lock().unwrap();
                    if state.is_serving() {
                        if let Some(t) = since {
                            if t.elapsed() > hb_limit {
                                let msg = format!("hung: no heartbeat for {} ms (limit {} ms)", t.elapsed().as_millis(), hb_limit.as_millis());
                                tracing::warn!(worker_id = %slot.id, "{msg}; killing");
                                hung = Some(msg);
                                kill_group(&child, libc::SIGKILL);
                            }
                        }
                    }
                }
                c = ctl.recv(), if stop.is_none() => {
                    let (ack, restart) = match c {
                        Some(Control::Stop(ack)) => (Some(ack), false),
                        Some(Control::Restart) => (None, true),
                        None => (None, false),
                    };
                    self.update(slot, |i| i.state = WorkerState::Stopping);
                    stop = Some((ack, restart));
                    break self.stop_child(&mut child, &in_tx).await;
                }
                _ = self.shutdown.cancelled(), if stop.is_none() => {
                    self.update(slot, |i| i.state = WorkerState::Stopping);
                    stop = Some((None, false));
                    break self.stop_child(&mut child, &in_tx).await;
                }
            }
        };
        // Drain frames already written (tokens, a final error) before declaring the end.
        while stdout_open {
            match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.on_frame(slot, &line, spawned_at, &mut load_error)
                        .await
                }
                _ => stdout_open = false,
            }
        }
        *slot.stdin.lock().unwrap() = None;
        drop(in_tx);
        writer.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), log_task).await;

        let status_text = match &status {
            Ok(s) => describe_status(s),
            Err(e) => format!("wait failed: {e}"),
        };
        // Every request still waiting on this worker ends with an error now.
        let gone: Vec<PendingInfer> = slot
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in gone {
            let _ = p
                .out
                .send(ServerMsg::Error {
                    id: Some(p.client_id),
                    code: if stop.is_some() {
                        ErrorCode::ShuttingDown
                    } else {
                        ErrorCode::WorkerGone
                    },
                    message: format!("worker `{}` ended: {status_text}", slot.id),
                })
                .await;
        }
        match stop {
            Some((ack, true)) => {
                drop(ack);
                Outcome {
                    kind: OutcomeKind::RestartRequested,
                    reason: format!("restarted by operator ({status_text})"),
                }
            }
            Some((ack, false)) => Outcome {
                kind: OutcomeKind::Stopped(ack),
                reason: format!("stopped ({status_text})"),
            },
            None => {
                let code = status.as_ref().ok().and_then(|s| s.code());
                if let (Some(EXIT_MODEL_LOAD), Some(msg)) = (code, load_error.clone()) {
                    Outcome {
                        kind: OutcomeKind::LoadFailed,
                        reason: msg,
                    }
                } else if let Some(h) = hung {
                    Outcome::crashed(h)
                } else {
                    Outcome::crashed(status_text)
                }
            }
        }
    }

    /// Ask the worker to exit, then force it after the grace period.
    async fn stop_child(
        &self,
        child: &mut Child,
        stdin: &mpsc::Sender<String>,
    ) -> std::io::Result<std::process::ExitStatus> {
        let _ = stdin.try_send(encode(&ToWorker::Shutdown));
        kill_group(child, libc::SIGTERM);
        match tokio::time::timeout(Duration::from_millis(self.cfg.stop_grace_ms), child.wait())
            .await
        {
            Ok(s) => s,
            Err(_) => {
                kill_group(child, libc::SIGKILL);
                child.wait().await
            }
        }
    }

    async fn on_frame(
        &self,
        slot: &Arc<WorkerSlot>,
        line: &[u8],
        spawned_at: Instant,
        load_error: &mut Option<String>,
    ) {
        let msg = match decode_line::<FromWorker>(line) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.error("bad_worker_frame");
                tracing::warn!(worker_id = %slot.id, "bad frame from worker: {}", e.message);
                return;
            }
        };
        match msg {
            FromWorker::Hello {
                protocol_version, ..
            } if protocol_version != PROTOCOL_VERSION => {
                let msg = format!(
                    "worker speaks protocol {protocol_version}, agent speaks {PROTOCOL_VERSION}"
                );
                *load_error = Some(msg.clone());
                self.update(slot, |i| i.detail = msg);
            }
            FromWorker::Hello { .. } => {}
            FromWorker::Loading { stage, progress } => self.update(slot, |i| {
                i.state = WorkerState::Loading;
                i.detail = format!("{stage} {:.0}%", progress * 100.0);
            }),
            FromWorker::Ready { model } => {
                let ms = spawned_at.elapsed().as_millis() as u64;
                self.metrics.ready(ms as f64 / 1e3);
                *slot.last_heartbeat.lock().unwrap() = Some(Instant::now());
                self.update(slot, |i| {
                    i.state = WorkerState::Ready;
                    i.summary = Some(model.clone());
                    i.detail.clear();
                });
                let _ = self.events.send(Event::WorkerReady {
                    worker: slot.id.clone(),
                    model,
                    spawn_to_ready_ms: ms,
                });
            }
            FromWorker::Heartbeat {
                in_flight,
                last_tokens_per_s,
                rss_bytes,
                ..
            } => {
                *slot.last_heartbeat.lock().unwrap() = Some(Instant::now());
                {
                    let mut i = slot.info.lock().unwrap();
                    i.tokens_per_s = last_tokens_per_s;
                    i.rss_bytes = rss_bytes;
                }
                let _ = self.events.send(Event::Heartbeat {
                    worker: slot.id.clone(),
                    tokens_per_s: last_tokens_per_s,
                    rss_bytes,
                    in_flight,
                });
            }
            FromWorker::Token { id, text } => {
                let target = slot.pending.lock().unwrap().get_mut(&id).map(|p| {
                    p.tokens += 1;
                    (p.out.clone(), p.client_id)
                });
                if let Some((out, client_id)) = target {
                    // Awaiting applies backpressure to this worker's stdout; tokens are never dropped.
                    let _ = out
                        .send(ServerMsg::Token {
                            id: client_id,
                            text,
                        })
                        .await;
                }
            }
            FromWorker::Done {
                id,
                finish_reason,
                usage,
            } => {
                let p = slot.pending.lock().unwrap().remove(&id);
                if let Some(p) = p {
                    self.metrics
                        .infer_done(p.started.elapsed().as_secs_f64(), p.tokens);
                    let _ = p
                        .out
                        .send(ServerMsg::Reply {
                            id: p.client_id,
                            body: Reply::InferDone {
                                worker: slot.id.clone(),
                                finish_reason,
                                usage,
                            },
                        })
                        .await;
                }
                self.settle(slot);
            }
            FromWorker::Error {
                id: Some(id),
                code,
                message,
            } => {
                let p = slot.pending.lock().unwrap().remove(&id);
                if let Some(p) = p {
                    self.metrics.error(code.as_str());
                    let _ = p
                        .out
                        .send(ServerMsg::Error {
                            id: Some(p.client_id),
                            code,
                            message,
                        })
                        .await;
                }
                self.settle(slot);
            }
            FromWorker::Error {
                id: None,
                code,
                message,
            } => {
                if code == ErrorCode::ModelLoad || code == ErrorCode::VersionMismatch {
                    *load_error = Some(message.clone());
                }
                tracing::warn!(worker_id = %slot.id, %code, "worker error: {message}");
            }
        }
    }

    /// Back to Ready when the last request finished.
    fn settle(&self, slot: &WorkerSlot) {
        let idle = slot.pending.lock().unwrap().is_empty();
        let busy = slot.info.lock().unwrap().state == WorkerState::Busy;
        if idle && busy {
            self.update(slot, |i| i.state = WorkerState::Ready);
        }
    }
}

enum OutcomeKind {
    Stopped(Option<oneshot::Sender<()>>),
    RestartRequested,
    LoadFailed,
    Crashed,
}

struct Outcome {
    kind: OutcomeKind,
    reason: String,
}

impl Outcome {
    fn crashed(reason: String) -> Self {
        Self {
            kind: OutcomeKind::Crashed,
            reason,
        }
    }
}

fn kill_group(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling the worker's own process group (created with process_group(0)).
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
}

fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                _ => "",
            }
        ),
        _ => "unknown exit".into(),
    }
}

fn proc_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    s.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|p| p * 4096)
}

/// Keep a worker's stderr: the last lines in memory, everything on disk (rotated at 8 MiB).
async fn collect_log(slot: Arc<WorkerSlot>, path: PathBuf, stderr: tokio::process::ChildStderr) {
    const MAX: u64 = 8 << 20;
    if std::fs::metadata(&path)
        .map(|m| m.len() > MAX)
        .unwrap_or(false)
    {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .ok();
    let mut lines = ByteLines::new(stderr);
    while let Ok(Some(line)) = lines.next_line().await {
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
        let mut log = slot.log.lock().unwrap();
        if log.len() == LOG_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}

/// Lines of a child's pipe as bytes. Unlike `AsyncBufReadExt::lines`, bytes that are not UTF-8 do
/// not end the stream (the line is handed on and refused by the decoder), and a line is kept only
/// up to one byte past the frame limit (the rest is skipped), so a worker cannot make the agent
/// buffer without bound. Cancel-safe: a partial line stays in `buf` until its newline arrives.
struct ByteLines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> ByteLines<R> {
    fn new(r: R) -> Self {
        Self {
            reader: BufReader::new(r),
            buf: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at end of stream.
    async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Ok((!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf)));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = (rbee_proto::MAX_FRAME_BYTES + 1).saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            let used = newline.map_or(chunk.len(), |i| i + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
        }
    }
}
