//! Load: many concurrent sessions issue infer, spawn, kill, list, status and ping against one real
//! agent (real workers, real model) for a bounded time, each keeping several requests in flight.
//!
//! Every request must get exactly one final frame (a reply or an error carrying its id): none
//! lost, none answered twice, no token after the end of its stream, no frame for an id never
//! sent. The agent's resident memory after the run must be within `RSS_GROWTH_LIMIT` of what it
//! was before, and no worker may be left behind by the spawn/kill churn.
//!
//! Short by default (20 s, 16 sessions); `RBEE_LOAD_SECS` and `RBEE_LOAD_SESSIONS` make it longer
//! or wider. Figures are printed at the end (`--no-capture` to see them).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientMsg, Event, Reply, Request, ServerMsg, SpawnSpec};
use rbee_proto::{SamplingParams, WorkerState, PROTOCOL_VERSION};
use rbee_testkit::{children_of, model_path, wait_for, AgentProc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Requests each session keeps in flight.
const DEPTH: usize = 4;
/// How long a spawning session keeps its worker before killing it.
const SPAWN_LIFETIME: Duration = Duration::from_secs(5);
/// How long a session sends no inference after a `busy` answer.
const BUSY_PAUSE: Duration = Duration::from_millis(250);
/// Resident memory the agent may gain over a run (the long runs are the real test of this).
const RSS_GROWTH_LIMIT: u64 = 48 << 20;
/// Error codes a correct agent may answer under this load.
const EXPECTED_ERRORS: &[&str] = &["busy", "worker_gone", "shutting_down"];

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024
}

/// Tiny deterministic generator: no extra dependency, and a failing run can be replayed.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Tally {
    sent: u64,
    finals: u64,
    tokens: u64,
    ok: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    /// One message per `op:code`, for the report.
    samples: BTreeMap<String, String>,
    /// Anything that breaks "exactly one final per request".
    violations: Vec<String>,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.sent += o.sent;
        self.finals += o.finals;
        self.tokens += o.tokens;
        for (k, v) in o.ok {
            *self.ok.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.samples {
            self.samples.entry(k).or_insert(v);
        }
        self.violations.extend(o.violations);
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Infer { .. } => "infer",
        Request::Spawn(_) => "spawn",
        Request::Kill { .. } => "kill",
        Request::ListWorkers => "list_workers",
        Request::Status => "status",
        Request::Ping => "ping",
        Request::TailLog { .. } => "tail_log",
        _ => "other",
    }
}

async fn open(agent: &AgentProc, name: &str) -> RawWs {
    let mut req = agent.url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", agent.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: name.into(),
        identity: None,
    };
    ws.send(Message::text(encode(&hello))).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(
            matches!(decode::<ServerMsg>(&t), Ok(ServerMsg::Welcome { .. })),
            "{t}"
        ),
        other => panic!("no welcome: {other:?}"),
    }
    ws
}

/// One load session's bookkeeping: what is in flight, what ended, and its own worker.
struct Load {
    idx: u64,
    spawner: bool,
    stable: Vec<String>,
    rng: XorShift,
    t: Tally,
    outstanding: HashMap<u64, &'static str>,
    done: HashSet<u64>,
    next_id: u64,
    /// The worker this session spawned, and when.
    mine: Option<(String, Instant)>,
    spawning: bool,
    /// After a `busy`, this session leaves the workers alone for a moment (as a client should).
    infer_after: Instant,
    model_file: String,
}

impl Load {
    fn new(idx: u64, spawner: bool, stable: Vec<String>) -> Self {
        Self {
            idx,
            spawner,
            stable,
            rng: XorShift(0x9E37_79B9_7F4A_7C15 ^ (idx + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            t: Tally::default(),
            outstanding: HashMap::new(),
            done: HashSet::new(),
            next_id: 1,
            mine: None,
            spawning: false,
            infer_after: Instant::now(),
            model_file: model_path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
        }
    }

    /// The next request: the spawner's own spawn/kill first, else a weighted random one.
    fn next_body(&mut self) -> Request {
        let roll = self.rng.below(100);
        if self.spawner && self.mine.is_none() && !self.spawning {
            self.spawning = true;
            return Request::Spawn(SpawnSpec {
                model: model_path().display().to_string(),
                device: "cpu".into(),
                threads: Some(1),
                ..Default::default()
            });
        }
        if self.spawner
            && self
                .mine
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() > SPAWN_LIFETIME)
        {
            return Request::Kill {
                worker: self.mine.take().unwrap().0,
            };
        }
        if roll < 60 && Instant::now() >= self.infer_after {
            return self.infer(roll);
        }
        if roll < 75 {
            Request::ListWorkers
        } else if roll < 85 {
            Request::Status
        } else if roll < 95 {
            Request::Ping
        } else {
            Request::TailLog {
                worker: self.stable[0].clone(),
                lines: 5,
            }
        }
    }

    /// By model (any ready worker, including ones being killed) or a stable worker by id.
    fn infer(&mut self, roll: u64) -> Request {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: 1 + self.rng.below(6) as u32,
            ..Default::default()
        };
        let prompt = format!("Item {}: the capital of France is", self.rng.below(1000));
        if roll.is_multiple_of(2) {
            Request::Infer {
                worker: None,
                model: Some(self.model_file.clone()),
                prompt,
                params,
            }
        } else {
            Request::Infer {
                worker: Some(self.stable[roll as usize % self.stable.len()].clone()),
                model: None,
                prompt,
                params,
            }
        }
    }

    /// Account for one frame from the agent.
    fn on_frame(&mut self, frame: ServerMsg) {
        let idx = self.idx;
        let (id, result) = match frame {
            ServerMsg::Token { id, .. } => {
                self.t.tokens += 1;
                if !self.outstanding.contains_key(&id) {
                    self.t.violations.push(format!(
                        "session {idx}: token for id {id} which is not in flight"
                    ));
                }
                return;
            }
            ServerMsg::Reply { id, body } => (id, Ok(body)),
            ServerMsg::Error {
                id: Some(id),
                code,
                message,
            } => (id, Err((code, message))),
            ServerMsg::Error {
                id: None,
                code,
                message,
            } => {
                self.t.violations.push(format!(
                    "session {idx}: error without id: {code}: {message}"
                ));
                return;
            }
            ServerMsg::Event { .. } | ServerMsg::Welcome { .. } => return,
        };
        let Some(op) = self.outstanding.remove(&id) else {
            let what = if self.done.contains(&id) {
                "second final"
            } else {
                "final for an id never sent"
            };
            self.t
                .violations
                .push(format!("session {idx}: {what} for id {id}"));
            return;
        };
        self.done.insert(id);
        self.t.finals += 1;
        self.on_final(op, id, result);
    }

    fn on_final(
        &mut self,
        op: &'static str,
        id: u64,
        result: Result<Reply, (rbee_proto::ErrorCode, String)>,
    ) {
        let idx = self.idx;
        match result {
            Ok(body) => {
                *self.t.ok.entry(op).or_default() += 1;
                if let Reply::Spawned { worker } = body {
                    self.spawning = false;
                    self.mine = Some((worker.id, Instant::now()));
                }
            }
            Err((code, message)) => {
                if op == "spawn" {
                    self.spawning = false;
                }
                if code == rbee_proto::ErrorCode::Busy {
                    self.infer_after = Instant::now() + BUSY_PAUSE;
                }
                if !EXPECTED_ERRORS.contains(&code.as_str()) {
                    self.t.violations.push(format!(
                        "session {idx}: unexpected error for {op} {id}: {code}: {message}"
                    ));
                }
                *self.t.errors.entry(format!("{op}:{code}")).or_default() += 1;
                self.t
                    .samples
                    .entry(format!("{op}:{code}"))
                    .or_insert(message);
            }
        }
    }
}

/// One session: keep `DEPTH` requests in flight until `until`, then drain and check every id.
async fn session(
    agent: &AgentProc,
    idx: u64,
    until: Instant,
    spawner: bool,
    stable: Vec<String>,
) -> Tally {
    let mut ws = open(agent, &format!("load-{idx}")).await;
    let mut l = Load::new(idx, spawner, stable);
    let drain_limit = until + Duration::from_secs(90);
    loop {
        let sending = Instant::now() < until;
        if !sending && l.outstanding.is_empty() {
            break;
        }
        while sending && l.outstanding.len() < DEPTH {
            let body = l.next_body();
            let id = l.next_id;
            l.next_id += 1;
            l.outstanding.insert(id, op_name(&body));
            l.t.sent += 1;
            ws.send(Message::text(encode(&ClientMsg::Request {
                id,
                deadline: None,
                timeout_ms: None,
                body,
            })))
            .await
            .unwrap();
        }
        let frame = match tokio::time::timeout_at(drain_limit.into(), ws.next()).await {
            Err(_) => {
                l.t.violations.push(format!(
                    "session {idx}: {} requests never answered: {:?}",
                    l.outstanding.len(),
                    l.outstanding
                ));
                break;
            }
            Ok(Some(Ok(Message::Text(text)))) => decode::<ServerMsg>(&text)
                .unwrap_or_else(|e| panic!("undecodable frame {e}: {text}")),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("session {idx} ended: {other:?}"),
        };
        l.on_frame(frame);
    }
    linger(&mut ws, idx, &mut l.t).await;
    let _ = ws.close(None).await;
    l.t
}

/// Anything arriving after every request ended is a duplicate or a stray.
async fn linger(ws: &mut RawWs, idx: u64, t: &mut Tally) {
    let linger = tokio::time::sleep(Duration::from_millis(500));
    tokio::pin!(linger);
    loop {
        tokio::select! {
            _ = &mut linger => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    if !matches!(decode::<ServerMsg>(&text), Ok(ServerMsg::Event { .. })) {
                        t.violations.push(format!("session {idx}: frame after every request ended: {text}"));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
}

/// Two stable workers that live through the whole run, once both are ready.
async fn stable_workers(
    c: &rbee_client::Client,
    ev: &mut tokio::sync::mpsc::Receiver<rbee_client::Incoming>,
) -> Vec<String> {
    let mut stable = Vec::new();
    for _ in 0..2 {
        let spec = SpawnSpec {
            model: model_path().display().to_string(),
            device: "cpu".into(),
            threads: Some(1),
            ..Default::default()
        };
        let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
            panic!()
        };
        stable.push(worker.id);
    }
    let mut ready = HashSet::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while ready.len() < stable.len() {
            if let Some(rbee_client::Incoming::Event(Event::WorkerState { worker })) =
                ev.recv().await
            {
                if worker.state == WorkerState::Ready {
                    ready.insert(worker.id);
                }
            }
        }
    })
    .await
    .expect("stable workers ready");
    stable
}

/// Sample the agent's RSS every 200 ms until `sampling` is cleared; the peak comes back.
fn sample_peak(
    pid: u32,
    sampling: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while sampling.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_bytes(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    })
}

/// Kill what the spawners left; then only the stable workers may remain, ready, never restarted,
/// and no other worker process may be alive.
async fn only_stable_remain(c: &rbee_client::Client, stable: &[String], pid: u32) {
    let Reply::Workers { workers } = c.request(Request::ListWorkers, None).await.unwrap() else {
        panic!()
    };
    for w in workers.iter().filter(|w| !stable.contains(&w.id)) {
        c.request(
            Request::Kill {
                worker: w.id.clone(),
            },
            None,
        )
        .await
        .unwrap();
    }
    let Reply::Workers { workers } = c.request(Request::ListWorkers, None).await.unwrap() else {
        panic!()
    };
    let mut ids: Vec<_> = workers.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    let mut want = stable.to_vec();
    want.sort();
    assert_eq!(ids, want, "only the stable workers remain");
    // Busy is not hung: the stable workers were never restarted.
    assert!(
        workers
            .iter()
            .all(|w| w.state == WorkerState::Ready && w.in_flight == 0 && w.restarts == 0),
        "{workers:?}"
    );
    let stable_pids: HashSet<u32> = workers.iter().filter_map(|w| w.pid).collect();
    wait_for(Duration::from_secs(10), "killed workers to exit", || {
        (children_of(pid).into_iter().collect::<HashSet<_>>() == stable_pids).then_some(())
    });
}

fn report(sessions: u64, elapsed: Duration, total: &Tally, rss: [u64; 3]) {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "load: {sessions} sessions × {DEPTH} in flight for {:.1} s: {} requests, {} finals, {} tokens ({:.0} requests/s)",
        elapsed.as_secs_f64(),
        total.sent,
        total.finals,
        total.tokens,
        total.finals as f64 / elapsed.as_secs_f64()
    );
    println!("load: ok by op {:?}", total.ok);
    println!("load: errors by op:code {:?}", total.errors);
    println!("load: error messages {:?}", total.samples);
    println!(
        "load: agent RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mb(rss[0]),
        mb(rss[1]),
        mb(rss[2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_every_request_answered_exactly_once_and_memory_bounded() {
    let secs = env_or("RBEE_LOAD_SECS", 20);
    let sessions = env_or("RBEE_LOAD_SESSIONS", 16);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "telemetry_ms = 250\nstop_grace_ms = 1000\nworker_queue = 4\n",
    )
    .unwrap();
    let agent = AgentProc::start(
        &dir.path().join("state"),
        &["--config", cfg.to_str().unwrap()],
    );
    let pid = agent.pid();

    let (c, mut ev) = agent.subscribed().await;
    let stable = stable_workers(&c, &mut ev).await;
    drop(ev);
    let rss_before = rss_bytes(pid);

    // Peak RSS while the load runs.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = sample_peak(pid, sampling.clone());

    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let agent = std::sync::Arc::new(agent);
    let mut tasks = Vec::new();
    for idx in 0..sessions {
        let (agent, stable) = (agent.clone(), stable.clone());
        // One session in eight also spawns and kills workers of its own (each spawn loads a model).
        tasks.push(tokio::spawn(async move {
            session(&agent, idx, until, idx % 8 == 0, stable).await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.await.unwrap();

    only_stable_remain(&c, &stable, pid).await;
    // Let the allocator settle, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(pid);
    report(sessions, elapsed, &total, [rss_before, peak, rss_after]);

    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        total.violations.is_empty(),
        "{} violations, first: {:#?}",
        total.violations.len(),
        &total.violations[..total.violations.len().min(10)]
    );
    assert_eq!(
        total.finals, total.sent,
        "every request gets exactly one final frame"
    );
    assert!(
        elapsed < Duration::from_secs(secs + 60),
        "draining took too long: {elapsed:?}"
    );
    assert!(
        total.ok.get("infer").copied().unwrap_or(0) >= 4,
        "too few successful inferences: {:?}",
        total.ok
    );
    assert!(
        total.ok.get("spawn").copied().unwrap_or(0) >= 1
            && total.ok.get("kill").copied().unwrap_or(0) >= 1,
        "{:?}",
        total.ok
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT,
        "agent RSS grew from {:.1} MiB to {:.1} MiB (limit +{:.0} MiB)",
        mb(rss_before),
        mb(rss_after),
        mb(RSS_GROWTH_LIMIT)
    );
}
