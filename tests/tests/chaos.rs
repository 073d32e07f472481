//! Chaos suite: real `rbee-agent`s, each in its own network namespace behind its own veth pair,
//! real `rbee-worker`s on the real small model, and one dashboard's own session code
//! (`dashboard::node_session::run_node` per node feeding `update::update` into one `State`) following them all
//! across the veths.
//!
//! Faults, drawn at random from a seeded RNG (the seed is printed; `RBEE_CHAOS_SEED` replays one):
//! * `kill -9` of a ready worker;
//! * a worker that stops heartbeating (`SIGSTOP`);
//! * `kill -9` of the agent, then a restart on the same state dir (same address);
//! * the veth link between the dashboard and the node down, then up (half the time with a worker
//!   killed behind the partition);
//! * a worker that crashes at load (a truncated GGUF in the node's model dir).
//!
//! Each fault hits one node, drawn at random. After each fault, within `CONVERGE` (stated below),
//! the suite checks on every node (the ones not hit must not be disturbed):
//! * the truth (`ListWorkers` from a fresh client) is what the operator asked for: every desired
//!   worker is there, ready (or `failed` when the circuit breaker must have opened), with the
//!   expected restart count; the corrupt one is `failed` and never restarted;
//! * the dashboard's `State` shows the same workers, states, pids and restart counts, connected;
//! * every `rbee-worker` process in the node's namespace is a child of the current agent, and
//!   they are exactly the pids the agent reports (no orphans, no strays);
//! * `audit.jsonl` only grew, every line parses, and the fault left its lines (`auto_restart`,
//!   `breaker_open`, `restart`, `agent_start`, `spawn`, `load_failed`, `kill`).
//!
//! The circuit breaker is predicted: a worker's third failure since the agent started it (or the
//! operator restarted it) must open the breaker; the suite then restarts it through the
//! dashboard's session, as an operator would.
//!
//! Short form (default): two nodes, every fault kind at least once, then faults for
//! `SHORT_SECS`. `RBEE_CHAOS_SECS=N` keeps drawing faults for N seconds, `RBEE_CHAOS_NODES=N`
//! runs N nodes.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_client::Client;
use rbee_proto::config::NodeConfig;
use rbee_proto::now_millis;
use rbee_proto::session::{Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::statedir;
use rbee_proto::WorkerState;
use rbee_testkit::{alive, children_of, model_path, AgentProc};
use rbee_tui::dashboard::action::{Action, Effect};
use rbee_tui::dashboard::runtime::{route, ACTION_QUEUE, CLOCK, EFFECT_QUEUE};
use rbee_tui::dashboard::state::{Conn, NodeState, State};
use rbee_tui::dashboard::update::update;
use rbee_tui::nodes::config::NodeTarget;
use tokio::sync::mpsc;

/// Bound on convergence after every fault: the dashboard, the agent and /proc agree.
const CONVERGE: Duration = Duration::from_secs(20);
/// Time spent drawing faults in the short form (after one of each kind).
const SHORT_SECS: u64 = 25;
const BREAKER_FAILURES: u32 = 3;
/// Fast supervision; a breaker window longer than any run, so its trips are predictable.
const CONFIG: &str = "heartbeat_ms = 300\ntelemetry_ms = 200\nstop_grace_ms = 1000\n[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\nmax_restarts = 1000\nbreaker_failures = 3\nbreaker_window_secs = 36000\n";
const PORT: u16 = 7733;
const GOOD_WORKERS: usize = 2;
const NODES: usize = 2;

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

/// A network namespace joined to ours by a veth pair (10.215.X.1 here, 10.215.X.2 there).
struct Netns {
    name: String,
    host_if: String,
    node_ip: String,
}

impl Netns {
    /// Namespace `index` of this test process (names and subnets unique per process and index).
    fn new(index: usize) -> Netns {
        let id = std::process::id();
        let x = (id as usize * 8 + index) % 250 + 1;
        let name = format!("rbee-chaos-{id}-{index}");
        let (host_if, node_if) = (format!("rch{id}-{index}"), format!("rcn{id}-{index}"));
        let _ = sh(&format!(
            "ip netns del {name} 2>/dev/null; ip link del {host_if} 2>/dev/null"
        ));
        let out = sh(&format!(
            "set -e; ip netns add {name}; ip link add {host_if} type veth peer name {node_if}; \
             ip link set {node_if} netns {name}; ip addr add 10.215.{x}.1/30 dev {host_if}; ip link set {host_if} up; \
             ip netns exec {name} ip addr add 10.215.{x}.2/30 dev {node_if}; \
             ip netns exec {name} ip link set {node_if} up; ip netns exec {name} ip link set lo up"
        ));
        let ns = Netns {
            name,
            host_if,
            node_ip: format!("10.215.{x}.2"),
        };
        assert!(
            out.status.success(),
            "network namespace setup failed (needs root and iproute2): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }

    fn pids(&self) -> Vec<u32> {
        let out = sh(&format!("ip netns pids {}", self.name));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn link(&self, up: bool) {
        let out = sh(&format!(
            "ip link set {} {}",
            self.host_if,
            if up { "up" } else { "down" }
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: processes inside this test's own namespace.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = sh(&format!(
            "ip netns del {}; ip link del {} 2>/dev/null; true",
            self.name, self.host_if
        ));
    }
}

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    HangWorker,
    KillAgent,
    LinkFlap,
    CrashAtLoad,
}

const ALL: [Fault; 5] = [
    Fault::KillWorker,
    Fault::HangWorker,
    Fault::KillAgent,
    Fault::LinkFlap,
    Fault::CrashAtLoad,
];

/// The dashboard, headless: the real session task and the real `update`, as `app::event_loop`
/// runs them (minus the terminal).
struct Dashboard {
    state: Arc<Mutex<State>>,
    effects: Vec<mpsc::Sender<Effect>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dashboard {
    /// Follow every node (`(url, token file)`), one session task each, as the dashboard does.
    fn start(nodes: Vec<(String, PathBuf)>) -> Dashboard {
        let targets: Vec<NodeTarget> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (url, token_file))| {
                NodeTarget::Remote(NodeConfig {
                    name: format!("chaos{i}"),
                    url,
                    token_file,
                    ..Default::default()
                })
            })
            .collect();
        let mut state = State::new(
            targets
                .iter()
                .map(|t| NodeState::new(t.name(), t.display_url()))
                .collect(),
        );
        state.now = now_millis();
        let state = Arc::new(Mutex::new(state));
        let (action_tx, mut action_rx) = mpsc::channel::<Action>(ACTION_QUEUE);
        let mut tasks = Vec::new();
        let mut txs = Vec::new();
        for (i, target) in targets.into_iter().enumerate() {
            let (effect_tx, effect_rx) = mpsc::channel(EFFECT_QUEUE);
            tasks.push(tokio::spawn(rbee_tui::dashboard::node_session::run_node(
                i,
                target,
                action_tx.clone(),
                effect_rx,
            )));
            txs.push(effect_tx);
        }
        drop(action_tx);
        let (st, routes) = (state.clone(), txs.clone());
        let driver = tokio::spawn(async move {
            let mut clock = tokio::time::interval(CLOCK);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let action = tokio::select! {
                    a = action_rx.recv() => match a { Some(a) => a, None => return },
                    _ = clock.tick() => Action::Tick,
                };
                let mut s = st.lock().unwrap();
                s.now = now_millis();
                for effect in update(&mut s, action) {
                    route(&mut s, &routes, effect);
                }
            }
        });
        tasks.push(driver);
        Dashboard {
            state,
            effects: txs,
            tasks,
        }
    }

    /// Ask node `node`'s agent something through the dashboard's session (as a key would).
    async fn request(&self, node: usize, request: Request) {
        self.effects[node]
            .send(Effect::Request { node, request })
            .await
            .expect("dashboard session alive");
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the operator asked for, and what the agent must therefore show.
#[derive(Debug, Default)]
struct Expect {
    /// Good workers: id → (restarts expected, failures since the breaker was last reset).
    good: BTreeMap<String, (u32, u32)>,
    /// Workers on the corrupt model: failed at load, never restarted.
    broken: BTreeSet<String>,
    /// Good workers whose breaker must be open now.
    tripped: BTreeSet<String>,
}

/// One node: its agent, namespace and files, and what the operator asked of it. Fields drop in
/// order: the agent, then the namespace (and anything left in it), then the files.
struct Node {
    /// Its index in the dashboard's node list.
    index: usize,
    want: Expect,
    /// The audit log as last checked; it may only grow.
    audit: String,
    agent: Option<AgentProc>,
    ns: Netns,
    state_dir: PathBuf,
    config: PathBuf,
    bad_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new(index: usize) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let bad_dir = dir.path().join("models");
        std::fs::create_dir(&bad_dir).unwrap();
        let bytes = std::fs::read(model_path()).unwrap();
        std::fs::write(bad_dir.join("truncated.gguf"), &bytes[..bytes.len() / 3]).unwrap();
        let ns = Netns::new(index);
        Node {
            index,
            want: Expect::default(),
            audit: String::new(),
            agent: None,
            ns,
            state_dir: dir.path().join("state"),
            config,
            bad_dir,
            _dir: dir,
        }
    }

    fn start_agent(&mut self) {
        let prefix = ["ip", "netns", "exec", self.ns.name.as_str()];
        let listen = format!("{}:{PORT}", self.ns.node_ip);
        let extra = [
            "--config",
            self.config.to_str().unwrap(),
            "--model-dir",
            self.bad_dir.to_str().unwrap(),
        ];
        self.agent = Some(AgentProc::start_in(
            &prefix,
            &listen,
            &self.state_dir,
            &extra,
            &[],
        ));
    }

    fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("agent running")
    }

    fn url(&self) -> String {
        format!("ws://{}:{PORT}", self.ns.node_ip)
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.state_dir.join(statedir::AUDIT)).unwrap_or_default()
    }

    fn bad_model(&self) -> PathBuf {
        self.bad_dir.join("truncated.gguf")
    }

    /// `rbee-worker` processes in the node's namespace.
    fn worker_procs(&self) -> Vec<u32> {
        self.ns
            .pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "rbee-worker")
                    && alive(*p)
            })
            .collect()
    }
}

async fn client(url: &str, token: &str) -> Result<Client, String> {
    let (c, _events) =
        tokio::time::timeout(Duration::from_secs(3), Client::connect(url, token, "chaos"))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
    Ok(c)
}

async fn list_workers(url: &str, token: &str) -> Result<Vec<WorkerInfo>, String> {
    let c = client(url, token).await?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        c.request(Request::ListWorkers, None),
    )
    .await
    {
        Ok(Ok(Reply::Workers { workers })) => Ok(workers),
        other => Err(format!("ListWorkers: {other:?}")),
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One look at the truth, the dashboard and /proc; `Err` says what does not agree yet.
async fn check(node: &Node, dash: &Dashboard) -> Result<(), String> {
    let want = &node.want;
    let agent = node.agent();
    let truth = list_workers(&node.url(), &agent.token).await?;
    let by_id: BTreeMap<&str, &WorkerInfo> = truth.iter().map(|w| (w.id.as_str(), w)).collect();
    let want_ids: BTreeSet<&str> = want
        .good
        .keys()
        .chain(want.broken.iter())
        .map(|s| s.as_str())
        .collect();
    let have_ids: BTreeSet<&str> = by_id.keys().copied().collect();
    if want_ids != have_ids {
        return Err(format!("agent has workers {have_ids:?}, want {want_ids:?}"));
    }
    for (id, (restarts, _)) in &want.good {
        let w = by_id[id.as_str()];
        if want.tripped.contains(id) {
            if w.state != WorkerState::Failed || !w.detail.contains("circuit breaker open") {
                return Err(format!("{id}: breaker should be open: {w:?}"));
            }
        } else if w.state != WorkerState::Ready || w.pid.is_none() {
            return Err(format!("{id}: not ready yet: {} {}", w.state, w.detail));
        }
        if w.restarts != *restarts {
            return Err(format!("{id}: restarts {} want {restarts}", w.restarts));
        }
    }
    for id in &want.broken {
        let w = by_id[id.as_str()];
        if w.state != WorkerState::Failed || w.pid.is_some() {
            return Err(format!("{id} (corrupt model): {w:?}"));
        }
        assert_eq!(
            w.restarts, 0,
            "a worker that cannot load must not be restarted: {w:?}"
        );
    }
    // /proc: the agent's live workers are its children, and there is no other worker process.
    let agent_pid = agent.pid();
    let truth_pids: BTreeSet<u32> = truth.iter().filter_map(|w| w.pid).collect();
    let procs: BTreeSet<u32> = node.worker_procs().into_iter().collect();
    for p in &procs {
        if ppid(*p) != Some(agent_pid) {
            return Err(format!(
                "orphan: rbee-worker {p} has parent {:?}, agent is {agent_pid}",
                ppid(*p)
            ));
        }
    }
    if procs != truth_pids {
        return Err(format!(
            "worker processes {procs:?}, agent reports {truth_pids:?}"
        ));
    }
    let children: BTreeSet<u32> = children_of(agent_pid).into_iter().collect();
    // The dashboard, through its own session.
    let s = dash.state.lock().unwrap();
    let n = &s.nodes[node.index];
    if n.conn != Conn::Connected {
        return Err(format!("dashboard: node is {}", n.conn.label()));
    }
    let dash_ids: BTreeSet<&str> = n.workers.iter().map(|w| w.info.id.as_str()).collect();
    if dash_ids != have_ids {
        return Err(format!(
            "dashboard shows {dash_ids:?}, agent has {have_ids:?}"
        ));
    }
    for w in &n.workers {
        let t = by_id[w.info.id.as_str()];
        if (w.info.state, w.info.pid, w.info.restarts) != (t.state, t.pid, t.restarts) {
            return Err(format!(
                "dashboard {}: {} pid {:?} restarts {}; agent: {} pid {:?} restarts {}",
                w.info.id, w.info.state, w.info.pid, w.info.restarts, t.state, t.pid, t.restarts
            ));
        }
        if w.info.state == WorkerState::Ready {
            let pid = w.info.pid.unwrap();
            assert!(alive(pid) && children.contains(&pid), "dashboard shows {} ready as pid {pid}, which is not a live child of agent {agent_pid}", w.info.id);
        }
    }
    Ok(())
}

/// Wait until every node agrees with what was asked of it; the time that took.
async fn converge(nodes: &[Node], dash: &Dashboard, what: &str) -> Duration {
    let t0 = Instant::now();
    let mut last = (0, String::new());
    'poll: while t0.elapsed() < CONVERGE {
        for node in nodes {
            if let Err(e) = check(node, dash).await {
                last = (node.index, e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'poll;
            }
        }
        return t0.elapsed();
    }
    let (i, e) = last;
    panic!(
        "after {what}: node {i}: no convergence within {CONVERGE:?}: {e}\nagent log tail:\n{}",
        tail(&nodes[i].agent().log(), 30)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The node's audit log only grew since last checked, parses line by line, and its new lines hold
/// each `(action, worker)` in `want` (worker `None`: any).
fn audit_grew(node: &mut Node, want: &[(&str, Option<&str>)], what: &str) {
    let before = std::mem::take(&mut node.audit);
    let after = node.audit();
    let what = format!("{what}, node {}", node.index);
    assert!(
        after.starts_with(&before),
        "after {what}: audit log lost or rewrote lines ({} → {} bytes)",
        before.len(),
        after.len()
    );
    let new: Vec<serde_json::Value> = after[before.len()..]
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("after {what}: torn audit line {l:?}: {e}"))
        })
        .collect();
    for (action, worker) in want {
        let found = new
            .iter()
            .any(|e| e["action"] == *action && worker.is_none_or(|w| e["worker"] == w));
        assert!(
            found,
            "after {what}: no `{action}` audit line for {worker:?} among {new:?}"
        );
    }
    node.audit = after;
}

async fn spawn(node: &Node, model: &Path) -> String {
    let c = client(&node.url(), &node.agent().token)
        .await
        .expect("client");
    let spec = SpawnSpec {
        model: model.display().to_string(),
        device: "cpu".into(),
        threads: Some(1),
        ..Default::default()
    };
    match c.request(Request::Spawn(spec), None).await {
        Ok(Reply::Spawned { worker }) => worker.id,
        other => panic!("spawn: {other:?}"),
    }
}

/// A worker's failure (crash or hang): it restarts, or on the breaker's count the breaker opens.
/// Returns the audit action expected.
fn on_failure(want: &mut Expect, id: &str) -> &'static str {
    let (restarts, failures) = want.good.get_mut(id).unwrap();
    *failures += 1;
    if *failures >= BREAKER_FAILURES {
        want.tripped.insert(id.to_string());
        "breaker_open"
    } else {
        *restarts += 1;
        "auto_restart"
    }
}

fn pick_ready(rng: &mut Rng, want: &Expect) -> String {
    let ready: Vec<&String> = want
        .good
        .keys()
        .filter(|id| !want.tripped.contains(*id))
        .collect();
    ready[rng.below(ready.len())].clone()
}

async fn pid_of(node: &Node, id: &str) -> u32 {
    let workers = list_workers(&node.url(), &node.agent().token)
        .await
        .expect("list workers");
    workers
        .iter()
        .find(|w| w.id == id)
        .and_then(|w| w.pid)
        .unwrap_or_else(|| panic!("{id} has no pid"))
}

/// What a fault leaves to check: the audit lines it must have added, and the moment convergence
/// is timed from (for a link flap: the link coming back).
type Injected = (Vec<(&'static str, Option<String>)>, Instant);

/// SIGKILL (crash) or SIGSTOP (hang) a ready worker of node `k`.
async fn kill_worker(
    fault: Fault,
    nodes: &mut [Node],
    k: usize,
    dash: &Dashboard,
    rng: &mut Rng,
    what: &str,
) -> Injected {
    let mut lines = Vec::new();
    let id = pick_ready(rng, &nodes[k].want);
    let pid = pid_of(&nodes[k], &id).await;
    let sig = if fault == Fault::KillWorker {
        libc::SIGKILL
    } else {
        libc::SIGSTOP
    };
    // SAFETY: a worker of this test's agent.
    unsafe { libc::kill(pid as i32, sig) };
    lines.push((on_failure(&mut nodes[k].want, &id), Some(id.clone())));
    converge(nodes, dash, what).await;
    assert!(!alive(pid), "after {what}: old worker {pid} still there");
    (lines, Instant::now())
}

/// kill -9 node `k`'s agent and start a fresh one on the same state directory.
fn kill_agent(node: &mut Node) -> Injected {
    let mut lines = Vec::new();
    let mut old = node.agent.take().unwrap();
    let old_workers = children_of(old.pid());
    old.signal_and_wait(libc::SIGKILL);
    drop(old);
    // Even after kill -9 no worker outlives its agent.
    rbee_testkit::wait_for(
        Duration::from_secs(5),
        "workers to die with their agent",
        || old_workers.iter().all(|p| !alive(*p)).then_some(()),
    );
    tokio::task::block_in_place(|| node.start_agent());
    // A fresh agent restores every desired worker, with fresh counters and breakers.
    for v in node.want.good.values_mut() {
        *v = (0, 0);
    }
    node.want.tripped.clear();
    lines.push(("agent_start", None));
    for b in &node.want.broken {
        lines.push(("load_failed", Some(b.clone())));
    }
    (lines, Instant::now())
}

/// Cut node `k`'s link for a while, sometimes killing a worker behind the partition.
async fn link_flap(node: &mut Node, rng: &mut Rng, what: &str) -> Injected {
    let mut lines = Vec::new();
    // Half the time a worker is killed behind the partition, so the dashboard has
    // something to catch up on when the link comes back.
    let victim = (rng.below(2) == 0).then(|| pick_ready(rng, &node.want));
    let victim_pid = match &victim {
        Some(id) => Some(pid_of(node, id).await),
        None => None,
    };
    node.ns.link(false);
    let cut = tokio::time::timeout(
        Duration::from_millis(500),
        list_workers(&node.url(), &node.agent().token),
    )
    .await;
    assert!(
        !matches!(cut, Ok(Ok(_))),
        "after {what}: the node still answers with the link down"
    );
    if let (Some(id), Some(pid)) = (&victim, victim_pid) {
        // SAFETY: a worker of this test's agent.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        lines.push((on_failure(&mut node.want, id), Some(id.clone())));
    }
    let down = Duration::from_millis(300 + rng.below(2500) as u64);
    tokio::time::sleep(down).await;
    node.ns.link(true);

    (lines, Instant::now())
}

/// Spawn a worker on a corrupt model on node `k`: it must fail once and stay failed, then the
/// operator removes it.
async fn crash_at_load(nodes: &mut [Node], k: usize, dash: &Dashboard, what: &str) -> Injected {
    let mut lines = Vec::new();
    let id = spawn(&nodes[k], &nodes[k].bad_model()).await;
    nodes[k].want.broken.insert(id.clone());
    converge(nodes, dash, what).await;
    let node = &mut nodes[k];
    // Stays failed: no restart for a model that cannot load (3 × the longest backoff).
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_millis(1500) {
        let ws = list_workers(&node.url(), &node.agent().token)
            .await
            .unwrap();
        let w = ws.iter().find(|w| w.id == id).unwrap();
        assert!(
            w.state == WorkerState::Failed && w.restarts == 0,
            "after {what}: corrupt worker came back: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    audit_grew(
        node,
        &[("spawn", Some(&id)), ("load_failed", Some(&id))],
        what,
    );
    // The operator removes it.
    let c = client(&node.url(), &node.agent().token).await.unwrap();
    let injected = Instant::now();
    assert_eq!(
        c.request(Request::Kill { worker: id.clone() }, None)
            .await
            .unwrap(),
        Reply::Killed { worker: id.clone() }
    );
    node.want.broken.remove(&id);
    lines.push(("kill", Some(id)));
    (lines, injected)
}

/// Every node gets its good workers and one on a corrupt model; returns the time to converge.
async fn setup(nodes: &mut [Node], dash: &Dashboard) -> Duration {
    let model = model_path();
    for node in nodes.iter_mut() {
        for _ in 0..GOOD_WORKERS {
            let id = spawn(node, &model).await;
            node.want.good.insert(id, (0, 0));
        }
        let broken = spawn(node, &node.bad_model()).await;
        node.want.broken.insert(broken);
    }
    let t = converge(nodes, dash, "setup").await;
    for node in nodes.iter_mut() {
        let broken = node.want.broken.first().cloned().unwrap();
        audit_grew(
            node,
            &[
                ("agent_start", None),
                ("spawn", None),
                ("load_failed", Some(&broken)),
            ],
            "setup",
        );
    }
    t
}

/// Stop every agent: nothing may be left behind, and no audit line lost.
fn stop_all(nodes: &mut [Node]) {
    // Nothing left behind once the agents stop.
    for node in nodes.iter_mut() {
        let mut agent = node.agent.take().unwrap();
        let workers = children_of(agent.pid());
        agent.signal_and_wait(libc::SIGTERM);
        assert!(
            workers.iter().all(|p| !alive(*p)),
            "node {}: workers outlived their agent",
            node.index
        );
        assert!(
            node.audit().starts_with(&node.audit),
            "node {}: audit log lost lines at shutdown",
            node.index
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let started = Instant::now();
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let seed = env("RBEE_CHAOS_SEED").unwrap_or_else(now_millis);
    let secs = env("RBEE_CHAOS_SECS").unwrap_or(SHORT_SECS);
    let count = env("RBEE_CHAOS_NODES").map_or(NODES, |n| n.max(1) as usize);
    println!("chaos: seed {seed} (RBEE_CHAOS_SEED={seed} replays), {count} nodes, {secs} s of faults, convergence bound {CONVERGE:?}");
    let mut rng = Rng(seed);

    let mut nodes: Vec<Node> = (0..count).map(Node::new).collect();
    for node in &mut nodes {
        tokio::task::block_in_place(|| node.start_agent());
    }
    let dash = Dashboard::start(
        nodes
            .iter()
            .map(|n| (n.url(), n.state_dir.join(statedir::TOKEN)))
            .collect(),
    );
    let t = setup(&mut nodes, &dash).await;
    println!("chaos: setup converged in {t:?}");

    // One of each kind first (in a seeded order), then random faults until the time is up.
    let mut plan: Vec<Fault> = ALL.to_vec();
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i + 1));
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let mut survived: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut hits = vec![0u32; count];
    let mut cycles = 0u32;
    let mut worst = Duration::ZERO;
    let mut trips = 0u32;
    loop {
        let fault = if cycles < plan.len() as u32 {
            plan[cycles as usize]
        } else if Instant::now() < until {
            ALL[rng.below(ALL.len())]
        } else {
            break;
        };
        cycles += 1;
        let k = rng.below(count);
        hits[k] += 1;
        let what = format!("cycle {cycles} ({fault:?} on node {k})");
        let (lines, injected) = match fault {
            Fault::KillWorker | Fault::HangWorker => {
                kill_worker(fault, &mut nodes, k, &dash, &mut rng, &what).await
            }
            Fault::KillAgent => kill_agent(&mut nodes[k]),
            Fault::LinkFlap => link_flap(&mut nodes[k], &mut rng, &what).await,
            Fault::CrashAtLoad => crash_at_load(&mut nodes, k, &dash, &what).await,
        };
        converge(&nodes, &dash, &what).await;
        let t = injected.elapsed();
        worst = worst.max(t);
        let want_lines: Vec<(&str, Option<&str>)> =
            lines.iter().map(|(a, w)| (*a, w.as_deref())).collect();
        audit_grew(&mut nodes[k], &want_lines, &what);
        // The operator restarts a worker whose breaker opened, through the dashboard's session.
        let tripped: Vec<String> = nodes[k].want.tripped.iter().cloned().collect();
        for id in tripped {
            trips += 1;
            dash.request(k, Request::Restart { worker: id.clone() })
                .await;
            nodes[k].want.tripped.remove(&id);
            *nodes[k].want.good.get_mut(&id).unwrap() = (0, 0);
            let t = converge(&nodes, &dash, &format!("{what}: operator restart of {id}")).await;
            worst = worst.max(t);
            audit_grew(&mut nodes[k], &[("restart", Some(&id))], &what);
        }
        // The nodes not hit lost nothing either.
        for node in nodes.iter_mut().filter(|n| n.index != k) {
            audit_grew(node, &[], &what);
        }
        *survived.entry(fault).or_default() += 1;
        println!("chaos: {what} converged in {t:?}");
    }

    let faults: u32 = survived.values().sum();
    println!(
        "chaos: {cycles} cycles on {count} nodes, {faults} faults survived ({survived:?}), faults per node {hits:?}, {trips} breaker trips, worst convergence {worst:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for f in ALL {
        assert!(
            survived.get(&f).copied().unwrap_or(0) >= 1,
            "fault {f:?} never ran"
        );
    }
    stop_all(&mut nodes);
    drop(dash);
}
