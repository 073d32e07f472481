//! The gateway's one task: it runs the dashboard's session per node (`dashboard::node_session::run_node`,
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
use crate::dashboard::board::{Phase, RequestBoard, RequestRow};
use crate::dashboard::node_session::run_node;
use crate::dashboard::state::{NodeIdx, PromptId};
use crate::gateway::cluster::Cluster;
use crate::gateway::error::{parse_agent_error, ApiError};
use crate::gateway::job::{Cmd, GenEvent, Job, JobId};
use crate::gateway::openai::{Endpoint, Input, KeepAlive};
use crate::gateway::sched::{pick_worker, spawn_node, supply, Load, Place};
use crate::gateway::stats::{AuditLine, AuditLog, Snapshot, Stats};
use crate::nodes::config::NodeTarget;

mod end;
mod place;
mod report;
mod scrape;

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
    /// Requests the gateway sends one worker at once (the rest wait in the gateway's queue);
    /// `None`: as many as the worker decodes at once (its `parallel`).
    pub worker_slots: Option<u32>,
    /// Requests that may wait for a worker; one more is refused with 429.
    pub queue: usize,
    /// Longest a request waits for a worker (loading one included) before a 503; never past
    /// the request's own timeout.
    pub queue_timeout: Duration,
    /// Keep-alive of workers spawned on demand when the request does not say.
    pub keep_alive: KeepAlive,
    /// Device of workers spawned on demand: `cpu`, `cuda:N`, or `auto` (the node's GPU with the
    /// most free memory, else its CPU).
    pub device: String,
    /// CPU threads of workers spawned on demand (all when `None`).
    pub threads: Option<usize>,
    /// Sequences per worker spawned on demand (the worker's default when `None`).
    pub parallel: Option<u32>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            worker_slots: None,
            queue: 256,
            queue_timeout: Duration::from_secs(300),
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            device: "auto".into(),
            threads: None,
            parallel: None,
        }
    }
}

/// A job the hub holds, waiting or running.
struct Live {
    job: Job,
    events: mpsc::UnboundedSender<GenEvent>,
    arrived: Instant,
    deadline: Instant,
    /// Past this while still waiting for a worker: 503.
    wait_deadline: Instant,
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
        scrapes: HashMap::new(),
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
    /// Scrapes waiting for a node's `Request::Metrics` answer, oldest first.
    scrapes: HashMap<NodeIdx, VecDeque<mpsc::UnboundedSender<crate::gateway::job::ScrapeMsg>>>,
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
            Cmd::Metrics(to) => self.scrape(to),
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
}
