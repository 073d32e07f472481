//! A load generator that speaks the agent side of the session protocol: `N` simulated nodes, each
//! the testkit's stand-in agent (`rbee_testkit::standin`: a real WebSocket server on
//! `127.0.0.1:<ephemeral>` that checks the bearer token and answers the handshake) with a
//! [`Behaviour`] that answers the requests a dashboard sends and, after `Subscribe`, pushes a
//! steady stream of events for `W` simulated workers.
//!
//! What one agent pushes to each subscribed session (all with the real `rbee_proto` types and
//! `frame::encode`):
//! * `Event::Heartbeat` for every worker, `tokens_per_s` times a second, carrying
//!   `tokens_per_s` (±10 %). This stands in for the worker's token traffic: an agent only relays
//!   `Token` frames to the session that asked for the generation, so a dashboard that is merely
//!   watching sees a node's generation as heartbeats. At 50 tok/s this is one frame per token.
//! * `Event::Telemetry` `telemetry_hz` times a second (8 GPUs by default, with per-process memory
//!   mapped to the workers).
//! * Now and then an `Event::WorkerState`: one worker per agent every `state_change_every`,
//!   cycling busy → ready → busy, and every fifth change a crash (crashed, then busy again with
//!   `restarts + 1`).
//!
//! A session that sends `Infer` gets `ServerMsg::Token` frames at `tokens_per_s` until
//! `max_tokens`, then `InferDone`; `Cancel` stops it. `Spawn`, `Kill` and `Restart` are refused
//! (`bad_request`): the simulated workers are fixed. Deadlines are not enforced.
//!
//! Dropping the [`LoadGen`] stops the simulations and closes every socket. It binds loopback only.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_proto::session::{
    AuditEntry, Event, GpuProcess, GpuTelemetry, ModelEntry, NodeStatus, Reply, Request, ServerMsg,
    Telemetry, WorkerInfo,
};
use rbee_proto::{
    now_millis, ErrorCode, FinishReason, ModelSummary, RequestId, Usage, WorkerState,
};
use rbee_testkit::standin::{frame, Answer, Batch, Behaviour, Ctx, Frame, Outbox, StandIn, Stats};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// Version the fake agents announce in `Welcome` and `Status`.
pub const AGENT_VERSION: &str = concat!("loadgen/", env!("CARGO_PKG_VERSION"));

const MODELS: [(&str, &str, u64); 3] = [
    (
        "/models/Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        "llama",
        4_920_000_000,
    ),
    (
        "/models/Qwen2.5-7B-Instruct-Q8_0.gguf",
        "qwen2",
        8_100_000_000,
    ),
    (
        "/models/Mistral-7B-Instruct-v0.3-Q5_K_M.gguf",
        "llama",
        5_140_000_000,
    ),
];
const WORDS: [&str; 8] = [
    " the", " bees", " hum", " over", " a", " quiet", " field", ".",
];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Simulated nodes, one stand-in agent each.
    pub agents: usize,
    /// Workers per node.
    pub workers: usize,
    /// Heartbeats per second per worker (and the tokens/s they report, and the rate of `Token`
    /// frames of an `Infer`).
    pub tokens_per_s: f64,
    /// Telemetry samples per second per agent.
    pub telemetry_hz: f64,
    /// Each agent changes one worker's state this often; zero: never.
    pub state_change_every: Duration,
    /// GPUs per simulated node; workers are spread over them.
    pub gpus: u32,
    /// The bearer token every agent requires.
    pub token: String,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            agents: 100,
            workers: 8,
            tokens_per_s: 50.0,
            telemetry_hz: 1.0,
            state_change_every: Duration::from_secs(5),
            gpus: 8,
            token: String::new(),
        }
    }
}

impl LoadConfig {
    /// Events per second all agents together offer to one subscribed dashboard.
    pub fn offered_events_per_s(&self) -> f64 {
        let per_agent = self.workers as f64 * self.tokens_per_s
            + self.telemetry_hz
            + if self.state_change_every.is_zero() {
                0.0
            } else {
                1.0 / self.state_change_every.as_secs_f64()
            };
        per_agent * self.agents as f64
    }
}

/// What the generator did, for its report.
#[derive(Debug, Default)]
pub struct Counters {
    /// What the stand-ins' servers counted: sessions, refused tokens, requests, frames written.
    pub server: Arc<Stats>,
    /// Heartbeat events published.
    pub heartbeats: AtomicU64,
    /// Telemetry events published.
    pub telemetry: AtomicU64,
    /// Worker state changes published.
    pub state_changes: AtomicU64,
    /// `Token` frames of generations.
    pub tokens: AtomicU64,
}

impl Counters {
    /// Every counter on one line, `name=value`.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let server = &self.server;
        format!(
            "sessions={} refused_auth={} requests={} frames={} heartbeats={} telemetry={} state_changes={} tokens={}",
            g(&server.sessions),
            g(&server.refused_auth),
            g(&server.requests),
            g(&server.frames),
            g(&self.heartbeats),
            g(&self.telemetry),
            g(&self.state_changes),
            g(&self.tokens),
        )
    }
}

/// The running agents. Dropping it stops them all and closes every session.
pub struct LoadGen {
    /// `ws://127.0.0.1:PORT`, one per agent, in order.
    pub urls: Vec<String>,
    /// What they did.
    pub counters: Arc<Counters>,
    _agents: Vec<StandIn<Agent>>,
    _simulations: JoinSet<()>,
}

impl LoadGen {
    /// Bind every agent on loopback and start serving.
    pub async fn start(cfg: LoadConfig) -> std::io::Result<LoadGen> {
        if !(cfg.tokens_per_s > 0.0 && cfg.telemetry_hz > 0.0) {
            return Err(std::io::Error::other(
                "tokens_per_s and telemetry_hz must be positive",
            ));
        }
        let cfg = Arc::new(cfg);
        let counters = Arc::new(Counters::default());
        let mut simulations = JoinSet::new();
        let mut agents = Vec::with_capacity(cfg.agents);
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        for index in 0..cfg.agents {
            let agent = Arc::new(Agent::new(index, cfg.clone(), counters.clone()));
            simulations.spawn(simulate(agent.clone()));
            let server = counters.server.clone();
            agents.push(StandIn::serve_at(loopback, &cfg.token, agent, server).await?);
        }
        Ok(LoadGen {
            urls: agents.iter().map(StandIn::url).collect(),
            counters,
            _agents: agents,
            _simulations: simulations,
        })
    }
}

/// One simulated node: the stand-in's behaviour and the clock's state.
pub struct Agent {
    index: usize,
    name: String,
    cfg: Arc<LoadConfig>,
    counters: Arc<Counters>,
    sim: Mutex<Sim>,
    subscribers: Mutex<Vec<Outbox>>,
}

/// The simulated node: its workers and a cheap deterministic random source.
struct Sim {
    workers: Vec<WorkerInfo>,
    rng: u64,
    changes: u64,
    /// Worker that crashed on the last change and comes back on the next, if any.
    crashed: Option<usize>,
}

impl Sim {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

fn worker_model(i: usize) -> (&'static str, &'static str, u64) {
    MODELS[i % MODELS.len()]
}

fn model_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

impl Agent {
    fn new(index: usize, cfg: Arc<LoadConfig>, counters: Arc<Counters>) -> Self {
        let name = format!("gpu-node-{index:03}");
        let gpus = cfg.gpus.max(1) as usize;
        let workers = (0..cfg.workers)
            .map(|i| {
                let (model, arch, bytes) = worker_model(i);
                let device = format!("cuda:{}", i % gpus);
                WorkerInfo {
                    id: format!("w{}", i + 1),
                    model: model.into(),
                    device: device.clone(),
                    state: WorkerState::Busy,
                    pid: Some(10_000 + (index * 100 + i) as u32),
                    restarts: 0,
                    last_exit: None,
                    summary: Some(ModelSummary {
                        name: model_name(model).trim_end_matches(".gguf").into(),
                        architecture: arch.into(),
                        context_length: 8192,
                        memory_bytes: bytes,
                        device,
                        ..Default::default()
                    }),
                    heartbeat_age_ms: Some(0),
                    tokens_per_s: cfg.tokens_per_s,
                    rss_bytes: 900 << 20,
                    vram_bytes: bytes + (1 << 30),
                    in_flight: 1,
                    detail: String::new(),
                }
            })
            .collect();
        Self {
            index,
            name,
            counters,
            sim: Mutex::new(Sim {
                workers,
                rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                changes: 0,
                crashed: None,
            }),
            subscribers: Mutex::new(Vec::new()),
            cfg,
        }
    }

    fn workers(&self) -> Vec<WorkerInfo> {
        self.sim.lock().unwrap().workers.clone()
    }

    fn telemetry(&self) -> Telemetry {
        let mut sim = self.sim.lock().unwrap();
        let gpus = self.cfg.gpus as usize;
        let gpus = (0..gpus)
            .map(|g| {
                let processes: Vec<GpuProcess> = sim
                    .workers
                    .iter()
                    .enumerate()
                    .filter(|(i, w)| i % gpus == g && !w.state.is_terminal())
                    .map(|(_, w)| GpuProcess {
                        pid: w.pid.unwrap_or(0),
                        used_bytes: w.vram_bytes,
                        worker: Some(w.id.clone()),
                    })
                    .collect();
                let ours: u64 = processes.iter().map(|p| p.used_bytes).sum();
                GpuTelemetry {
                    index: g as u32,
                    name: "NVIDIA H100 80GB HBM3".into(),
                    mem_total_bytes: 80 << 30,
                    mem_used_bytes: ours
                        + (600 << 20)
                        + (sim.range(0.0, 1.0) * (256 << 20) as f64) as u64,
                    utilization_percent: sim.range(80.0, 100.0) as u32,
                    temperature_c: sim.range(58.0, 74.0) as u32,
                    power_watts: sim.range(480.0, 690.0) as f32,
                    processes,
                }
            })
            .collect();
        Telemetry {
            at: now_millis(),
            cpu_percent: sim.range(8.0, 35.0) as f32,
            mem_total_bytes: 512 << 30,
            mem_used_bytes: (96 << 30) + (sim.range(0.0, 8.0) * (1u64 << 30) as f64) as u64,
            disk_free_bytes: 1_700 << 30,
            gpus,
            gpu_status: String::new(),
            backends: vec!["cpu".into()],
        }
    }

    /// One heartbeat frame per worker.
    fn heartbeats(&self, batch: &mut Batch) {
        let mut sim = self.sim.lock().unwrap();
        let tps = self.cfg.tokens_per_s;
        for i in 0..sim.workers.len() {
            let jitter = sim.range(0.9, 1.1);
            let w = &sim.workers[i];
            let busy = w.state == WorkerState::Busy;
            let event = Event::Heartbeat {
                worker: w.id.clone(),
                tokens_per_s: if busy {
                    (tps * jitter * 10.0).round() / 10.0
                } else {
                    0.0
                },
                rss_bytes: w.rss_bytes,
                in_flight: busy as u32,
            };
            batch.push(event_frame(event));
        }
        self.counters
            .heartbeats
            .fetch_add(sim.workers.len() as u64, Ordering::Relaxed);
    }

    /// The next worker state change: busy → ready → busy …, every fifth a crash and comeback.
    fn state_change(&self, batch: &mut Batch) {
        let mut sim = self.sim.lock().unwrap();
        if sim.workers.is_empty() {
            return;
        }
        sim.changes += 1;
        let n = sim.workers.len();
        let (i, state) = match sim.crashed.take() {
            Some(i) => (i, WorkerState::Busy),
            None => {
                let i = (sim.changes as usize + self.index) % n;
                let state = if sim.changes.is_multiple_of(5) {
                    sim.crashed = Some(i);
                    WorkerState::Crashed
                } else if sim.workers[i].state == WorkerState::Busy {
                    WorkerState::Ready
                } else {
                    WorkerState::Busy
                };
                (i, state)
            }
        };
        let w = &mut sim.workers[i];
        if w.state == WorkerState::Crashed {
            w.restarts += 1;
            w.pid = w.pid.map(|p| p + 1_000_000);
        }
        w.state = state;
        w.in_flight = (state == WorkerState::Busy) as u32;
        w.tokens_per_s = if state == WorkerState::Busy {
            self.cfg.tokens_per_s
        } else {
            0.0
        };
        if state == WorkerState::Crashed {
            w.last_exit = Some("signal 9 (SIGKILL): out of memory".into());
            w.pid = None;
        }
        let worker = w.clone();
        drop(sim);
        batch.push(event_frame(Event::WorkerState { worker }));
        self.counters.state_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Hand `batch` to every subscribed session, waiting for room (a slow reader slows us down;
    /// nothing is dropped, so the dashboard's applied rate shows whether it keeps up).
    async fn publish(&self, batch: Batch) {
        let subs: Vec<_> = self.subscribers.lock().unwrap().clone();
        let mut gone = false;
        for tx in &subs {
            gone |= !tx.send_batch(batch.clone()).await;
        }
        if gone {
            self.subscribers
                .lock()
                .unwrap()
                .retain(|tx| !tx.is_closed());
        }
    }
}

fn event_frame(event: Event) -> Frame {
    frame(&ServerMsg::Event { event })
}

/// The agent's clock: heartbeats every `1 / tokens_per_s`, telemetry and state changes on
/// multiples of that tick. Agents start staggered over one period so their frames interleave.
async fn simulate(agent: Arc<Agent>) {
    let cfg = agent.cfg.clone();
    let period = Duration::from_secs_f64(1.0 / cfg.tokens_per_s);
    let stagger = period.mul_f64(agent.index as f64 / cfg.agents.max(1) as f64);
    let mut tick = tokio::time::interval_at(Instant::now() + stagger, period);
    // A stalled reader makes us catch up afterwards: the offered rate stays the configured one.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let every = |secs: f64| ((secs * cfg.tokens_per_s).round() as u64).max(1);
    let telemetry_every = every(1.0 / cfg.telemetry_hz);
    let state_every =
        (!cfg.state_change_every.is_zero()).then(|| every(cfg.state_change_every.as_secs_f64()));
    let offset = agent.index as u64 * 7919;
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if agent.subscribers.lock().unwrap().is_empty() {
            continue;
        }
        let mut batch = Vec::with_capacity(cfg.workers + 2);
        agent.heartbeats(&mut batch);
        if (n + offset).is_multiple_of(telemetry_every) {
            let telemetry = agent.telemetry();
            batch.push(event_frame(Event::Telemetry { telemetry }));
            agent.counters.telemetry.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(every) = state_every {
            if (n + offset).is_multiple_of(every) {
                agent.state_change(&mut batch);
            }
        }
        agent.publish(batch).await;
    }
}

impl Behaviour for Agent {
    fn node(&self) -> String {
        self.name.clone()
    }

    fn agent_version(&self) -> String {
        AGENT_VERSION.into()
    }

    fn answer(&self, ctx: &Ctx, request: Request) -> Answer {
        match request {
            Request::ListWorkers => Answer::Reply(Reply::Workers {
                workers: self.workers(),
            }),
            Request::Status => Answer::Reply(Reply::Status {
                status: NodeStatus {
                    node: self.name.clone(),
                    agent_version: AGENT_VERSION.into(),
                    telemetry: self.telemetry(),
                    workers: self.workers(),
                },
            }),
            Request::ListModels => Answer::Reply(Reply::Models {
                models: MODELS
                    .iter()
                    .map(|(reference, _, bytes)| ModelEntry {
                        name: model_name(reference).into(),
                        reference: (*reference).into(),
                        size_bytes: *bytes,
                        format: "gguf".into(),
                    })
                    .collect(),
            }),
            Request::TailLog { worker, lines } => {
                if self.workers().iter().any(|w| w.id == worker) {
                    let lines = (0..lines.min(20))
                        .map(|i| format!("[loadgen] {worker}: decode step {i}"))
                        .collect();
                    Answer::Reply(Reply::Log { worker, lines })
                } else {
                    Answer::Error(ErrorCode::NotFound, format!("no worker {worker}"))
                }
            }
            Request::Infer {
                worker,
                model,
                params,
                ..
            }
            | Request::Chat {
                worker,
                model,
                params,
                ..
            } => self.generate(ctx, worker, model, params.max_tokens),
            Request::Spawn(_)
            | Request::Kill { .. }
            | Request::Restart { .. }
            | Request::Pull { .. } => Answer::Error(
                ErrorCode::BadRequest,
                "the load generator's workers and models are fixed: spawn, kill, restart and pull are refused".into(),
            ),
            // Subscribe, Ping and Cancel are the stand-in's own.
            _ => Answer::Error(ErrorCode::BadRequest, "not a load generator request".into()),
        }
    }

    /// Greet the dashboard with an audit entry, then publish to it.
    fn subscribed(&self, out: &Outbox) {
        let entry = AuditEntry {
            at: now_millis(),
            action: "auth_ok".into(),
            peer: Some("127.0.0.1".into()),
            who: None,
            worker: None,
            detail: "dashboard subscribed".into(),
        };
        // A fresh session's queue has room; the greeting goes ahead of the first published batch.
        out.try_send_batch(vec![event_frame(Event::Audit { entry })]);
        self.subscribers.lock().unwrap().push(out.clone());
    }
}

impl Agent {
    /// An `Infer` (or `Chat`) on a serving worker: tokens at the workers' rate.
    fn generate(
        &self,
        ctx: &Ctx,
        worker: Option<String>,
        model: Option<String>,
        max_tokens: u32,
    ) -> Answer {
        let workers = self.workers();
        let pick = workers.iter().find(|w| {
            w.state.is_serving()
                && worker.as_ref().is_none_or(|id| &w.id == id)
                && model.as_ref().is_none_or(|m| &w.model == m)
        });
        match pick {
            None => Answer::Error(ErrorCode::NotFound, "no ready worker matches".into()),
            Some(w) => Answer::Stream(Box::pin(stream_tokens(
                ctx.id,
                w.id.clone(),
                max_tokens,
                self.cfg.tokens_per_s,
                ctx.out.clone(),
                self.counters.clone(),
            ))),
        }
    }
}

/// One `Infer`: `max_tokens` tokens at `tokens_per_s`, then `InferDone` (the stand-in stops it on
/// `Cancel`).
async fn stream_tokens(
    id: RequestId,
    worker: String,
    max_tokens: u32,
    tokens_per_s: f64,
    out: Outbox,
    counters: Arc<Counters>,
) {
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / tokens_per_s));
    let mut first = None;
    for n in 0..max_tokens {
        tick.tick().await;
        first.get_or_insert_with(|| t0.elapsed());
        let text = WORDS[n as usize % WORDS.len()].to_string();
        let msg = ServerMsg::Token { id, text };
        if !out.send(msg).await {
            return;
        }
        counters.tokens.fetch_add(1, Ordering::Relaxed);
    }
    let total = t0.elapsed().as_secs_f64() * 1000.0;
    let ttft = first.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(total);
    let decode_ms = (total - ttft).max(1e-3);
    let usage = Usage {
        prompt_tokens: 8,
        generated_tokens: max_tokens,
        time_to_first_token_ms: ttft,
        prompt_tokens_per_s: 8.0 * 1000.0 / ttft.max(1e-3),
        decode_tokens_per_s: max_tokens.saturating_sub(1) as f64 * 1000.0 / decode_ms,
        total_ms: total,
    };
    let done = ServerMsg::Reply {
        id,
        body: Reply::InferDone {
            worker,
            finish_reason: FinishReason::Length,
            usage,
        },
    };
    out.send(done).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_client::{Client, ClientError, Incoming};

    fn small() -> LoadConfig {
        LoadConfig {
            agents: 2,
            workers: 3,
            tokens_per_s: 50.0,
            telemetry_hz: 5.0,
            state_change_every: Duration::from_millis(100),
            gpus: 2,
            token: "s3cret".into(),
        }
    }

    #[tokio::test]
    async fn speaks_the_agent_protocol() {
        let lg = LoadGen::start(small()).await.unwrap();
        assert_eq!(lg.urls.len(), 2);
        assert!(lg.urls.iter().all(|u| u.starts_with("ws://127.0.0.1:")));

        let bad = Client::connect(&lg.urls[0], "wrong", "test").await;
        assert!(
            matches!(bad, Err(ClientError::Unauthorized { .. })),
            "{:?}",
            bad.err()
        );

        let (client, mut events) = Client::connect(&lg.urls[1], "s3cret", "test")
            .await
            .unwrap();
        assert_eq!(client.node, "gpu-node-001");
        let Reply::Workers { workers } = client.request(Request::ListWorkers, None).await.unwrap()
        else {
            panic!("workers")
        };
        assert_eq!(workers.len(), 3);
        let Reply::Status { status } = client.request(Request::Status, None).await.unwrap() else {
            panic!("status")
        };
        assert_eq!(status.telemetry.gpus.len(), 2);
        assert!(matches!(
            client.request(Request::Ping, None).await.unwrap(),
            Reply::Pong { .. }
        ));
        assert!(matches!(
            client.request(Request::Subscribe, None).await.unwrap(),
            Reply::Subscribed
        ));
        let (mut hb, mut tel, mut st) = (0, 0, 0);
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Some(Incoming::Event(Event::Heartbeat { .. }))) => hb += 1,
                Ok(Some(Incoming::Event(Event::Telemetry { .. }))) => tel += 1,
                Ok(Some(Incoming::Event(Event::WorkerState { .. }))) => st += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // 0.6 s at 50 Hz × 3 workers ≈ 90 heartbeats; telemetry at 5 Hz ≈ 3; changes at 10 Hz ≈ 6.
        assert!((60..=110).contains(&hb), "heartbeats {hb}");
        assert!(tel >= 2, "telemetry {tel}");
        assert!(st >= 3, "state changes {st}");

        let mut s = client
            .start(
                Request::Infer {
                    worker: None,
                    model: Some(MODELS[0].0.into()),
                    prompt: "hi".into(),
                    params: rbee_proto::SamplingParams {
                        max_tokens: 5,
                        ..Default::default()
                    },
                },
                None,
            )
            .await
            .unwrap();
        let mut tokens = 0;
        loop {
            match s.next().await.unwrap() {
                rbee_client::Streamed::Token(_) => tokens += 1,
                rbee_client::Streamed::Reply(Reply::InferDone { usage, .. }) => {
                    assert_eq!(usage.generated_tokens, 5);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(tokens, 5);
    }
}
