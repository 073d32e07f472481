//! The gateway's one task: it runs the dashboard's session per node (`nodes::session::run_node`,
//! driven through its `Action`/`Effect` channels), keeps the cluster view from what they report,
//! and schedules jobs: a free worker of the model (least loaded across nodes), else a bounded
//! wait queue while a worker is spawned on demand, retries once elsewhere when a worker or node
//! is lost before the first token, cancels on the worker when the client goes, enforces each
//! request's timeout on the gateway's clock, and unloads the workers it spawned once their
//! keep-alive runs out.
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rbee_proto::session::{Event, Request, SpawnSpec};
use rbee_proto::{now_millis, ErrorCode, WorkerState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::dashboard::action::{Action, Effect, InferDone};
use crate::dashboard::state::{NodeIdx, PromptId};
use crate::gateway::board::{Phase, RequestBoard, RequestRow};
use crate::gateway::cluster::Cluster;
use crate::gateway::error::{parse_agent_error, ApiError};
use crate::gateway::job::{Cmd, GenEvent, Job, JobId};
use crate::gateway::openai::{Endpoint, Input, KeepAlive};
use crate::gateway::sched::{device_for, pick_worker, spawn_node, supply, Load, Place};
use crate::gateway::stats::{AuditLine, AuditLog, Snapshot, Stats};
use crate::nodes::config::NodeTarget;
use crate::nodes::session::run_node;

/// Actions queued from all sessions before they wait for the hub.
const ACTION_QUEUE: usize = 4096;
/// Effects queued per node.
const EFFECT_QUEUE: usize = 1024;
/// How often timeouts and keep-alives are looked at.
const TICK: Duration = Duration::from_millis(200);
/// A node that refused to load a model is not asked again for it for this long.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

/// How the hub schedules.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Requests the gateway sends one worker at once (the rest wait in the gateway's queue).
    pub worker_slots: u32,
    /// Requests that may wait for a worker; one more is refused with 429.
    pub queue: usize,
    /// Keep-alive of workers spawned on demand when the request does not say.
    pub keep_alive: KeepAlive,
    /// Device of workers spawned on demand: `cpu`, `cuda:N`, or `auto` (the node's GPU with the
    /// most free memory, else its CPU).
    pub device: String,
    /// CPU threads of workers spawned on demand (all when `None`).
    pub threads: Option<usize>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            worker_slots: 2,
            queue: 256,
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            device: "cpu".into(),
            threads: None,
        }
    }
}

/// A job the hub holds, waiting or running.
struct Live {
    job: Job,
    events: mpsc::UnboundedSender<GenEvent>,
    arrived: Instant,
    deadline: Instant,
    /// Where it runs now, with the prompt id its session knows it by.
    running: Option<(Place, PromptId)>,
    /// Workers it failed on.
    tried: Vec<Place>,
    retries: u32,
    started: Option<Instant>,
    first_token: Option<Instant>,
    tokens: u64,
    /// Set when the client went away or the timeout passed: the end is awaited, not reported.
    ending: Option<&'static str>,
    last_place: Option<(String, String)>,
    /// The worker's decode speed, once done.
    decode_tok_s: f64,
}

/// A worker the gateway started, and when it may be unloaded.
struct Owned {
    keep: KeepAlive,
    idle_since: Instant,
}

/// A `Spawn` sent and not answered yet.
struct PendingSpawn {
    node: NodeIdx,
    model: String,
    spec: SpawnSpec,
    keep: KeepAlive,
}

/// How the HTTP side reaches the hub.
#[derive(Clone)]
pub struct HubHandle {
    /// Commands (unbounded: a dropped request's cancel must never wait).
    pub cmds: mpsc::UnboundedSender<Cmd>,
    /// Becomes true once every node connected and listed its models, or failed once.
    pub settled: watch::Receiver<bool>,
    /// Every request, live and recent, for the dashboard's Requests view.
    pub board: RequestBoard,
}

/// Start the hub and one session per target. Must be called inside a tokio runtime; the hub
/// lives until every `HubHandle` is dropped.
pub fn start(targets: Vec<NodeTarget>, cfg: HubConfig, audit: AuditLog) -> HubHandle {
    let board = RequestBoard::default();
    let (cmds, cmd_rx) = mpsc::unbounded_channel();
    let (settled_tx, settled) = watch::channel(targets.is_empty());
    let (actions, inbox) = mpsc::channel(ACTION_QUEUE);
    let mut sessions = JoinSet::new();
    let mut effects = Vec::new();
    let names = targets.iter().map(|t| t.name().to_string()).collect();
    for (i, target) in targets.into_iter().enumerate() {
        let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
        effects.push(etx);
        sessions.spawn(run_node(i, target, actions.clone(), erx));
    }
    let hub = Hub {
        cfg,
        cluster: Cluster::new(names),
        effects,
        jobs: HashMap::new(),
        waiting: VecDeque::new(),
        prompts: HashMap::new(),
        next_prompt: 1,
        load: Load::new(),
        owned: HashMap::new(),
        spawns: Vec::new(),
        refused: HashMap::new(),
        settled_nodes: HashSet::new(),
        settled: settled_tx,
        stats: Stats::default(),
        audit,
        unloading: HashSet::new(),
        stopping: None,
        board: board.clone(),
    };
    tokio::spawn(hub.run(inbox, cmd_rx, sessions));
    HubHandle {
        cmds,
        settled,
        board,
    }
}

struct Hub {
    cfg: HubConfig,
    cluster: Cluster,
    effects: Vec<mpsc::Sender<Effect>>,
    jobs: HashMap<JobId, Live>,
    waiting: VecDeque<JobId>,
    prompts: HashMap<PromptId, JobId>,
    next_prompt: PromptId,
    load: Load,
    owned: HashMap<Place, Owned>,
    spawns: Vec<PendingSpawn>,
    /// Nodes that refused to load a model: model → node → (reason, when).
    refused: HashMap<String, HashMap<NodeIdx, (String, Instant)>>,
    settled_nodes: HashSet<NodeIdx>,
    settled: watch::Sender<bool>,
    stats: Stats,
    audit: AuditLog,
    /// Kills sent at shutdown and not yet answered.
    unloading: HashSet<Place>,
    /// Answered once `unloading` is empty.
    stopping: Option<oneshot::Sender<()>>,
    board: RequestBoard,
}

impl Hub {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Action>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        _sessions: JoinSet<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                a = inbox.recv() => match a {
                    Some(a) => self.on_action(a),
                    None => return,
                },
                c = cmds.recv() => match c {
                    Some(c) => self.on_cmd(c),
                    None => return,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Generate(job, events) => self.generate(*job, events),
            Cmd::Cancel(id) => self.cancel(id, "cancelled"),
            Cmd::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::Audit(line) => self.audit.write(&line),
            Cmd::Shutdown(done) => self.shut_down(done),
        }
    }

    /// Unload every worker the gateway spawned; `done` is answered when the last kill is.
    fn shut_down(&mut self, done: oneshot::Sender<()>) {
        let owned: Vec<Place> = self.owned.drain().map(|(p, _)| p).collect();
        for (node, worker) in owned {
            if !self.cluster.nodes[node].up {
                continue;
            }
            let effect = Effect::Request {
                node,
                request: Request::Kill {
                    worker: worker.clone(),
                },
            };
            if self.effects[node].try_send(effect).is_ok() {
                tracing::info!(node = %self.cluster.nodes[node].name, %worker, "unloading at shutdown");
                self.unloading.insert((node, worker));
            }
        }
        self.stopping = Some(done);
        self.stopped_if_done();
    }

    fn stopped_if_done(&mut self) {
        if self.unloading.is_empty() {
            if let Some(done) = self.stopping.take() {
                let _ = done.send(());
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cluster: self.cluster.clone(),
            waiting: self.waiting.len(),
            running: self.jobs.values().filter(|j| j.running.is_some()).count(),
            owned: self.owned.keys().map(|(n, w)| (*n, w.clone())).collect(),
            stats: self.stats.clone(),
        }
    }

    // ---- jobs in ----

    fn generate(&mut self, job: Job, events: mpsc::UnboundedSender<GenEvent>) {
        self.stats.requests += 1;
        let now = Instant::now();
        let id = job.id;
        let model = job.model.clone();
        let live = Live {
            deadline: now + job.timeout,
            job,
            events,
            arrived: now,
            running: None,
            tried: Vec::new(),
            retries: 0,
            started: None,
            first_token: None,
            tokens: 0,
            ending: None,
            last_place: None,
            decode_tok_s: 0.0,
        };
        self.board.add(RequestRow {
            id,
            arrived: now_millis(),
            client: live.job.client.clone(),
            key: live.job.key_id.clone(),
            model: model.clone(),
            node: String::new(),
            worker: String::new(),
            phase: Phase::Waiting,
            queue_ms: None,
            ttft_ms: None,
            tokens: 0,
            tok_s: 0.0,
            total_ms: None,
        });
        self.jobs.insert(id, live);
        if !self.cluster.knows(&model) {
            let err = if self.cluster.nodes.iter().any(|n| n.up) {
                ApiError::model_not_found(&model, &self.cluster.model_names())
            } else {
                ApiError::unavailable(
                    "no_node",
                    format!("no node is reachable ({})", self.down_reasons()),
                    5,
                )
            };
            return self.fail(id, err);
        }
        if self.place(id) {
            return;
        }
        if self.waiting.len() >= self.cfg.queue {
            self.stats.queue_full += 1;
            return self.fail(id, ApiError::queue_full(self.cfg.queue, 1));
        }
        self.waiting.push_back(id);
        self.ensure_supply(&model, &[]);
    }

    /// Send job `id` to the best free worker; false when there is none.
    fn place(&mut self, id: JobId) -> bool {
        loop {
            let Some(live) = self.jobs.get(&id) else {
                return true;
            };
            let slots = self.cfg.worker_slots;
            let Some(place) = pick_worker(
                &self.cluster,
                &self.load,
                slots,
                &live.job.model,
                &live.tried,
            ) else {
                return false;
            };
            if self.start_on(id, place.clone()) {
                return true;
            }
            if let Some(live) = self.jobs.get_mut(&id) {
                live.tried.push(place);
            }
        }
    }

    fn start_on(&mut self, id: JobId, place: Place) -> bool {
        let prompt = self.next_prompt;
        let Some(live) = self.jobs.get_mut(&id) else {
            return true;
        };
        let (node, worker) = place.clone();
        let request = match &live.job.input {
            Input::Chat(messages) => Request::Chat {
                worker: Some(worker.clone()),
                model: None,
                messages: messages.clone(),
                params: live.job.params.clone(),
            },
            Input::Text(prompt) => Request::Infer {
                worker: Some(worker.clone()),
                model: None,
                prompt: prompt.clone(),
                params: live.job.params.clone(),
            },
        };
        let effect = Effect::Infer {
            node,
            prompt,
            request,
        };
        if self.effects[node].try_send(effect).is_err() {
            return false;
        }
        self.next_prompt += 1;
        let now = Instant::now();
        if live.started.is_none() {
            live.started = Some(now);
            self.stats.started += 1;
            self.stats.queue_ms_sum += now.duration_since(live.arrived).as_millis() as u64;
        }
        live.running = Some((place.clone(), prompt));
        let node_name = self.cluster.nodes[node].name.clone();
        live.last_place = Some((node_name.clone(), worker.clone()));
        let queue_ms = live
            .started
            .map(|t| t.duration_since(live.arrived).as_millis() as u64);
        self.board.update(id, |r| {
            r.node = node_name.clone();
            r.worker = worker.clone();
            r.phase = Phase::Running;
            r.queue_ms = queue_ms;
        });
        let _ = live.events.send(GenEvent::Started {
            node: node_name,
            worker,
        });
        self.prompts.insert(prompt, id);
        *self.load.entry(place.clone()).or_default() += 1;
        if let Some(o) = self.owned.get_mut(&place) {
            o.idle_since = now;
        }
        true
    }

    /// Place what waits, in arrival order; then make sure every model still waited for has a
    /// worker on its way, or refuse its requests with the reason.
    fn pump(&mut self) {
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some(id) = self.waiting.pop_front() {
            if !self.jobs.contains_key(&id) {
                continue;
            }
            if !self.place(id) {
                still.push_back(id);
            }
        }
        self.waiting = still;
        let mut wanted: Vec<(String, Vec<Place>)> = self
            .waiting
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| (j.job.model.clone(), j.tried.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        for (model, tried) in wanted {
            self.ensure_supply(&model, &tried);
        }
    }

    /// A worker of `model` is needed (for a request that failed on `exclude`) when none is
    /// serving or coming, or when every serving one is full: spawn one on the best node that has none, or refuse the waiting requests when no
    /// node can hold it and nothing else will come.
    fn ensure_supply(&mut self, model: &str, exclude: &[Place]) {
        let s = supply(&self.cluster, &self.load, self.cfg.worker_slots, model, exclude);
        let spawning = self.spawns.iter().any(|p| p.model == model);
        if s.free > 0 || spawning || (s.serving == 0 && s.coming > 0) {
            return;
        }
        let refused: HashSet<NodeIdx> = self
            .refused
            .get(model)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        if let Some(node) = spawn_node(&self.cluster, model, &refused, &self.cfg.device) {
            let keep = self
                .waiting
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .find(|j| j.job.model == model)
                .and_then(|j| j.job.keep_alive)
                .unwrap_or(self.cfg.keep_alive);
            self.spawn(node, model, keep);
            return;
        }
        if s.serving == 0 && s.coming == 0 {
            let reason = self.why_no_node(model);
            let msg = format!("no node can hold model `{model}`: {reason}");
            let ids: Vec<JobId> = self
                .waiting
                .iter()
                .copied()
                .filter(|id| {
                    self.jobs.get(id).is_some_and(|j| {
                        j.job.model == model && exclude.iter().all(|p| j.tried.contains(p))
                    })
                })
                .collect();
            self.waiting.retain(|id| !ids.contains(id));
            for id in ids {
                self.fail(id, ApiError::unavailable("no_capacity", msg.clone(), 30));
            }
        }
    }

    fn spawn(&mut self, node: NodeIdx, model: &str, keep: KeepAlive) {
        let Some(entry) = self.cluster.nodes[node].entry(model) else {
            return;
        };
        let spec = SpawnSpec {
            model: entry.reference.clone(),
            device: device_for(&self.cluster.nodes[node], &self.cfg.device),
            threads: self.cfg.threads,
        };
        let effect = Effect::Request {
            node,
            request: Request::Spawn(spec.clone()),
        };
        if self.effects[node].try_send(effect).is_err() {
            self.refuse_node(model, node, "its session queue is full".into());
            return;
        }
        tracing::info!(node = %self.cluster.nodes[node].name, model, "spawning a worker on demand");
        self.stats.spawns += 1;
        self.spawns.push(PendingSpawn {
            node,
            model: model.into(),
            spec,
            keep,
        });
    }

    fn refuse_node(&mut self, model: &str, node: NodeIdx, reason: String) {
        self.refused
            .entry(model.into())
            .or_default()
            .insert(node, (reason, Instant::now()));
    }

    /// Why no node can take a new worker of `model`, node by node.
    fn why_no_node(&self, model: &str) -> String {
        let refused = self.refused.get(model);
        let parts: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let why = if let Some((r, _)) = refused.and_then(|r| r.get(&i)) {
                    r.clone()
                } else if !n.up {
                    format!("unreachable ({})", n.reason)
                } else if n.entry(model).is_none() {
                    "does not have it".into()
                } else if let Some(w) = n.workers.values().find(|w| n.serves(w, model)) {
                    format!(
                        "worker {} is {} {}",
                        w.id,
                        w.state,
                        w.last_exit.clone().unwrap_or_default()
                    )
                    .trim_end()
                    .to_string()
                } else {
                    "cannot take it now".into()
                };
                format!("{}: {why}", n.name)
            })
            .collect();
        parts.join("; ")
    }

    fn down_reasons(&self) -> String {
        self.cluster
            .nodes
            .iter()
            .map(|n| format!("{}: {}", n.name, n.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    // ---- what the sessions report ----

    fn on_action(&mut self, action: Action) {
        let changed = self.cluster.apply(&action);
        match action {
            Action::Disconnected { node, reason, .. } => {
                self.settle(node);
                self.node_lost(node, &reason);
                self.unloading.retain(|(n, _)| *n != node);
                self.stopped_if_done();
            }
            Action::Reply {
                node,
                request: Request::Spawn(spec),
                result,
            } => self.spawn_answered(node, &spec, result.map(|_| ())),
            Action::Reply {
                node,
                request: Request::ListModels,
                ..
            } => self.settle(node),
            Action::Reply {
                node,
                request: Request::Kill { worker },
                ..
            } => {
                self.unloading.remove(&(node, worker));
                self.stopped_if_done();
            }
            Action::PromptToken { prompt, text, .. } => self.token(prompt, text),
            Action::PromptDone { prompt, result, .. } => self.done(prompt, result),
            Action::AgentEvent {
                node,
                event: Event::WorkerState { worker },
            } if matches!(worker.state, WorkerState::Exited | WorkerState::Failed) => {
                self.owned.remove(&(node, worker.id));
            }
            _ => {}
        }
        if changed {
            self.pump();
        }
    }

    fn settle(&mut self, node: NodeIdx) {
        if self.settled_nodes.insert(node) && self.settled_nodes.len() >= self.cluster.nodes.len() {
            let _ = self.settled.send(true);
        }
    }

    fn spawn_answered(&mut self, node: NodeIdx, spec: &SpawnSpec, result: Result<(), String>) {
        let Some(i) = self
            .spawns
            .iter()
            .position(|p| p.node == node && &p.spec == spec)
        else {
            return;
        };
        let p = self.spawns.remove(i);
        match result {
            Ok(()) => {
                // The reply put the worker into the cluster view; find it to own it.
                let n = &self.cluster.nodes[node];
                if let Some(w) = n
                    .workers
                    .values()
                    .filter(|w| {
                        w.model == spec.model && !self.owned.contains_key(&(node, w.id.clone()))
                    })
                    .max_by_key(|w| w.id.clone())
                {
                    self.owned.insert(
                        (node, w.id.clone()),
                        Owned {
                            keep: p.keep,
                            idle_since: Instant::now(),
                        },
                    );
                }
            }
            Err(reason) => {
                tracing::warn!(node = %self.cluster.nodes[node].name, model = %p.model, %reason, "spawn refused");
                self.refuse_node(&p.model, node, reason);
            }
        }
        self.pump();
    }

    fn token(&mut self, prompt: PromptId, text: String) {
        let Some(&id) = self.prompts.get(&prompt) else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if live.ending.is_some() {
            return;
        }
        let now = Instant::now();
        let first = *live.first_token.get_or_insert(now);
        let ttft = first.duration_since(live.arrived).as_millis() as u64;
        let secs = now.duration_since(first).as_secs_f64();
        self.board.update(id, |r| {
            r.tokens += 1;
            r.ttft_ms = Some(ttft);
            if secs > 0.0 {
                r.tok_s = (r.tokens - 1) as f64 / secs;
            }
        });
        if live.events.send(GenEvent::Token(text)).is_err() {
            self.cancel(id, "cancelled");
        }
    }

    fn done(&mut self, prompt: PromptId, result: Result<InferDone, String>) {
        let Some(id) = self.prompts.remove(&prompt) else {
            return;
        };
        let place = self
            .jobs
            .get_mut(&id)
            .and_then(|l| l.running.take())
            .map(|(p, _)| p);
        if let Some(place) = &place {
            self.release(place);
        }
        let Some(live) = self.jobs.get(&id) else {
            return;
        };
        if let Some(why) = live.ending {
            return self.finish(id, why.to_string());
        }
        match result {
            Ok(d) => {
                let n = u64::from(d.usage.generated_tokens);
                self.stats.tokens += n;
                if let Some(live) = self.jobs.get_mut(&id) {
                    live.tokens = n;
                    live.decode_tok_s = d.usage.decode_tokens_per_s;
                }
                let live = &self.jobs[&id];
                let _ = live.events.send(GenEvent::Done {
                    finish: d.finish_reason,
                    usage: d.usage,
                });
                self.finish(id, "ok".into());
            }
            Err(msg) => self.failed_on_worker(id, place, &msg),
        }
    }

    /// A generation failed: before its first token it moves once to another worker (a busy or
    /// vanished worker, a lost node); otherwise the client gets the error.
    fn failed_on_worker(&mut self, id: JobId, place: Option<Place>, msg: &str) {
        let parsed = parse_agent_error(msg);
        let retryable = match parsed {
            Some((code, _)) => matches!(
                code,
                ErrorCode::WorkerGone
                    | ErrorCode::Busy
                    | ErrorCode::NotFound
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Internal
            ),
            None => true,
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if retryable && live.first_token.is_none() && live.retries < 1 {
            live.retries += 1;
            live.tried.extend(place);
            self.stats.retries += 1;
            tracing::info!(job = id, error = msg, "retrying on another worker");
            let (model, tried) = (live.job.model.clone(), live.tried.clone());
            if !self.place(id) {
                self.waiting.push_front(id);
                self.ensure_supply(&model, &tried);
            }
            return;
        }
        let err = match parsed {
            Some((code, text)) => ApiError::from_agent(code, text),
            None => ApiError::unavailable("node_unreachable", msg.to_string(), 2),
        };
        self.fail(id, err);
    }

    fn release(&mut self, place: &Place) {
        let left = match self.load.get_mut(place) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.load.remove(place);
        }
        if let Some(o) = self.owned.get_mut(place) {
            o.idle_since = Instant::now();
        }
    }

    /// A node's session dropped: its session tasks are gone, so what ran there ends now.
    fn node_lost(&mut self, node: NodeIdx, reason: &str) {
        self.spawns.retain(|p| p.node != node);
        let lost: Vec<(PromptId, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(id, l)| match &l.running {
                Some(((n, _), prompt)) if *n == node => Some((*prompt, *id)),
                _ => None,
            })
            .collect();
        let msg = format!(
            "node `{}` unreachable: {reason}",
            self.cluster.nodes[node].name
        );
        for (prompt, _) in lost {
            self.done(prompt, Err(msg.clone()));
        }
        self.load.retain(|(n, _), _| *n != node);
    }

    // ---- endings ----

    /// The client went away (or the timeout passed): stop the generation on its worker; the
    /// job ends when the worker confirms.
    fn cancel(&mut self, id: JobId, why: &'static str) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if live.ending.is_some() {
            return;
        }
        live.ending = Some(why);
        match &live.running {
            Some(((node, _), prompt)) => {
                let effect = Effect::CancelInfer {
                    node: *node,
                    prompt: *prompt,
                };
                let _ = self.effects[*node].try_send(effect);
            }
            None => {
                self.waiting.retain(|w| *w != id);
                self.finish(id, why.into());
            }
        }
    }

    fn fail(&mut self, id: JobId, err: ApiError) {
        self.waiting.retain(|w| *w != id);
        let outcome = err.code.to_string();
        if let Some(live) = self.jobs.get(&id) {
            let _ = live.events.send(GenEvent::Failed(err));
        }
        self.finish(id, outcome);
    }

    /// Forget job `id`: count it, audit it, and unload a keep-alive-0 worker it leaves idle.
    fn finish(&mut self, id: JobId, outcome: String) {
        let Some(live) = self.jobs.remove(&id) else {
            return;
        };
        if let Some((place, prompt)) = &live.running {
            // Still running (a timeout): its end will not be awaited.
            self.prompts.remove(prompt);
            self.release(place);
        }
        match outcome.as_str() {
            "ok" => self.stats.ok += 1,
            "cancelled" => self.stats.cancelled += 1,
            "queue_full" => {}
            _ => self.stats.failed += 1,
        }
        let now = Instant::now();
        let total_ms = now.duration_since(live.arrived).as_millis() as u64;
        let ok = outcome == "ok";
        self.board.update(id, |r| {
            r.phase = Phase::Done(outcome.clone());
            r.total_ms = Some(total_ms);
            if ok {
                r.tokens = live.tokens;
                r.tok_s = live.decode_tok_s;
            }
        });
        let (node, worker) = live.last_place.clone().unwrap_or_default();
        self.audit.write(&AuditLine {
            at: now_millis(),
            key: live.job.key_id.clone(),
            client: live.job.client.clone(),
            endpoint: match live.job.endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completion => "completion",
            },
            model: live.job.model.clone(),
            node,
            worker,
            outcome,
            queue_ms: live
                .started
                .unwrap_or(now)
                .duration_since(live.arrived)
                .as_millis() as u64,
            ttft_ms: live
                .first_token
                .map(|t| t.duration_since(live.arrived).as_millis() as u64),
            tokens: live.tokens,
            total_ms,
        });
        self.unload_idle();
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let late: Vec<(JobId, bool)> = self
            .jobs
            .iter()
            .filter(|(_, l)| l.ending.is_none() && now >= l.deadline)
            .map(|(id, l)| (*id, l.running.is_some()))
            .collect();
        for (id, running) in late {
            let secs = self.jobs[&id].job.timeout.as_secs();
            let model = self.jobs[&id].job.model.clone();
            if running {
                let err = ApiError::server(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the request ran past its {secs} s timeout"),
                );
                let _ = self.jobs[&id].events.send(GenEvent::Failed(err));
                self.cancel(id, "timeout");
            } else {
                let msg = format!(
                    "no worker of `{model}` could take the request within {secs} s (waiting: {})",
                    self.waiting.len()
                );
                self.fail(id, ApiError::unavailable("timeout", msg, 5));
            }
        }
        for r in self.refused.values_mut() {
            r.retain(|_, (_, at)| at.elapsed() < REFUSAL_MEMORY);
        }
        self.unload_idle();
    }

    /// Unload the gateway's workers whose keep-alive ran out (0: as soon as they are idle).
    fn unload_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<Place> = self
            .owned
            .iter()
            .filter(|(place, o)| {
                !self.load.contains_key(*place)
                    && match o.keep {
                        KeepAlive::Forever => false,
                        KeepAlive::For(d) => now.duration_since(o.idle_since) >= d,
                    }
                    && self.cluster.nodes[place.0]
                        .workers
                        .get(&place.1)
                        .is_some_and(|w| w.state.is_serving())
            })
            .map(|(p, _)| p.clone())
            .collect();
        for place in idle {
            let (node, worker) = place.clone();
            let effect = Effect::Request {
                node,
                request: Request::Kill {
                    worker: worker.clone(),
                },
            };
            if self.effects[node].try_send(effect).is_ok() {
                tracing::info!(node = %self.cluster.nodes[node].name, %worker, "unloading an idle worker");
                self.owned.remove(&place);
                self.stats.unloads += 1;
            }
        }
    }
}
