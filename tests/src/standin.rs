//! The one stand-in for `rbee-agent` that tests and benchmarks use when a real agent would be in the
//! way (no models, no GPUs, thousands of simulated workers). It is a real WebSocket server on
//! loopback speaking the agent side of the session protocol with the real `rbee_proto` types: it
//! checks the bearer token, answers `Hello`, and handles `Subscribe`, `Ping` and `Cancel` itself.
//! Everything else a [`Behaviour`] decides:
//!
//! * [`Echo`] (the default, for the dashboard's tests): workers that can be spawned (loading,
//!   then ready, or failed for a model whose name holds `broken`), killed and restarted; an
//!   `Infer` echoes its prompt word by word (`slow` streams until cancelled).
//! * the benchmark load generator (`rbee_bench::loadgen`) builds fixed simulated nodes on top
//!   and pushes a steady stream of events to every subscribed session.
//!
//! Outgoing frames go through one writer task per session in batches, flushed once per batch:
//! a generator that publishes many events at once pays one syscall, as the real agent does.
//! Dropping a [`StandIn`] closes its listener and every session.
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{
    ClientMsg, Event, ModelEntry, NodeStatus, Reply, Request, ServerMsg, Telemetry, WorkerInfo,
};
use rbee_proto::{
    now_millis, ErrorCode, FinishReason, RequestId, Usage, WorkerState, PROTOCOL_VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// One encoded WebSocket frame, ready to be written (cheap to clone for many sessions).
pub type Frame = Message;
/// Frames written together and flushed once.
pub type Batch = Vec<Frame>;
/// Work a behaviour hands to the session: events after a reply, a stream of tokens.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Batches queued per session before the sender waits for the socket.
const SESSION_QUEUE: usize = 64;
/// Most frames written between two flushes.
const FLUSH_AFTER: u64 = 256;

/// Encode one server message as a frame.
pub fn frame(msg: &ServerMsg) -> Frame {
    Message::text(encode(msg))
}

/// What the stand-ins saw, shared by every stand-in started with the same `Arc`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions that passed the token check.
    pub sessions: AtomicU64,
    /// Upgrades refused for a wrong or missing token.
    pub refused_auth: AtomicU64,
    /// Requests received after the handshake.
    pub requests: AtomicU64,
    /// Frames written, all kinds.
    pub frames: AtomicU64,
}

/// A session's outgoing queue. Sends wait for room: a slow reader slows the sender, and nothing
/// is dropped.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Batch>,
}

impl Outbox {
    /// Queue one message; false once the session is gone.
    pub async fn send(&self, msg: ServerMsg) -> bool {
        self.tx.send(vec![frame(&msg)]).await.is_ok()
    }

    /// Queue frames to be written back to back and flushed once; false once the session is gone.
    pub async fn send_batch(&self, batch: Batch) -> bool {
        self.tx.send(batch).await.is_ok()
    }

    /// Queue frames if there is room now; false when the queue is full or the session gone.
    pub fn try_send_batch(&self, batch: Batch) -> bool {
        self.tx.try_send(batch).is_ok()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The request being answered and the session it came on.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The request's id, for frames a [`Task`] sends later.
    pub id: RequestId,
    /// The session's outgoing queue.
    pub out: Outbox,
    /// Whether this session has subscribed to events.
    pub subscribed: bool,
}

/// How a behaviour answers one request.
pub enum Answer {
    /// One reply.
    Reply(Reply),
    /// One error frame for the request.
    Error(ErrorCode, String),
    /// The reply, then a task on the session (the events that follow it).
    ReplyThen(Reply, Task),
    /// A generation: the task sends its tokens and final reply itself. A `Cancel` for this request
    /// stops it and sends the `cancelled` error in its place.
    Stream(Task),
}

/// What a stand-in agent is: its name and how it answers. `Hello`, `Subscribe`, `Ping` and
/// `Cancel` are the stand-in's.
pub trait Behaviour: Send + Sync + 'static {
    /// The node name `Welcome` and `Status` report.
    fn node(&self) -> String;
    /// The agent version `Welcome` reports.
    fn agent_version(&self) -> String;
    /// Answer a request other than `Subscribe`, `Ping` and `Cancel`.
    fn answer(&self, ctx: &Ctx, request: Request) -> Answer;
    /// Called once a session's `Subscribe` is answered, before the session reads on (a generator
    /// greets it and starts publishing to it).
    fn subscribed(&self, _out: &Outbox) {}
}

/// A running stand-in agent.
pub struct StandIn<B: Behaviour = Echo> {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// The bearer token it requires.
    pub token: String,
    /// What it counts.
    pub stats: Arc<Stats>,
    behaviour: Arc<B>,
    _tasks: JoinSet<()>,
}

impl StandIn<Echo> {
    /// An [`Echo`] agent on a free loopback port requiring `token`.
    pub async fn start(token: &str) -> Self {
        Self::serve(token, Arc::new(Echo::default()))
            .await
            .expect("bind a loopback port for the stand-in agent")
    }

    /// The workers it has now.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.behaviour.workers()
    }
}

impl<B: Behaviour> StandIn<B> {
    /// `behaviour` on a free loopback port requiring `token`.
    pub async fn serve(token: &str, behaviour: Arc<B>) -> std::io::Result<Self> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::serve_at(any, token, behaviour, Arc::default()).await
    }

    /// `behaviour` on `addr`, counting into `stats`.
    pub async fn serve_at(
        addr: SocketAddr,
        token: &str,
        behaviour: Arc<B>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        let server = Arc::new(Server {
            expected: format!("Bearer {token}"),
            behaviour: behaviour.clone(),
            stats: stats.clone(),
        });
        tasks.spawn(accept(listener, server));
        Ok(Self {
            addr,
            token: token.into(),
            stats,
            behaviour,
            _tasks: tasks,
        })
    }

    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// What answers the requests (its state survives a [`restart`](Self::restart)).
    pub fn behaviour(&self) -> &Arc<B> {
        &self.behaviour
    }

    /// Stop and start again on the same address with the same state: an agent restart as its
    /// sessions see it (connections dropped, then refused for a moment).
    pub async fn restart(self) -> Self {
        let (addr, token, behaviour, stats) = (
            self.addr,
            self.token.clone(),
            self.behaviour.clone(),
            self.stats.clone(),
        );
        drop(self);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Self::serve_at(addr, &token, behaviour, stats)
            .await
            .expect("rebind the stand-in agent's address")
    }
}

struct Server<B> {
    expected: String,
    behaviour: Arc<B>,
    stats: Arc<Stats>,
}

async fn accept<B: Behaviour>(listener: TcpListener, server: Arc<Server<B>>) {
    // Sessions live in this set, so dropping the stand-in closes them all.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { return };
                let _ = stream.set_nodelay(true);
                sessions.spawn(serve(stream, server.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Byte comparison whose time does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The socket's writer: whatever is queued goes out back to back, then one flush.
async fn write(
    mut sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<TcpStream>,
        Message,
    >,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
) {
    while let Some(batch) = rx.recv().await {
        let mut n = 0u64;
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            for m in batch {
                n += 1;
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if n < FLUSH_AFTER {
                next = rx.try_recv().ok();
            }
        }
        stats.frames.fetch_add(n, Ordering::Relaxed);
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

// The handshake callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn serve<B: Behaviour>(stream: TcpStream, server: Arc<Server<B>>) {
    let check = |req: &HttpRequest, resp: Response| -> Result<Response, ErrorResponse> {
        let given = req
            .headers()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if same(given, server.expected.as_bytes()) {
            Ok(resp)
        } else {
            server.stats.refused_auth.fetch_add(1, Ordering::Relaxed);
            let mut e = ErrorResponse::new(Some("unauthorized".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            Err(e)
        }
    };
    // The real agent's read buffer (see `rbee_proto::WS_READ_BUFFER_BYTES`).
    let config = WebSocketConfig::default().read_buffer_size(rbee_proto::WS_READ_BUFFER_BYTES);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
    else {
        return;
    };
    server.stats.sessions.fetch_add(1, Ordering::Relaxed);
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::channel::<Batch>(SESSION_QUEUE);
    let out = Outbox { tx };
    let mut session = Session {
        out: out.clone(),
        greeted: false,
        subscribed: false,
        streams: HashMap::new(),
        tasks: JoinSet::new(),
    };
    session.tasks.spawn(write(sink, rx, server.stats.clone()));
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        if !session.on_frame(&server, &text).await {
            break;
        }
    }
    // Dropping the session's tasks stops its writer and anything still streaming.
}

/// One connection's state.
struct Session {
    out: Outbox,
    greeted: bool,
    subscribed: bool,
    /// Generations under way, by request id: firing the sender cancels one.
    streams: HashMap<RequestId, oneshot::Sender<()>>,
    tasks: JoinSet<()>,
}

impl Session {
    /// Handle one text frame; false ends the session.
    async fn on_frame<B: Behaviour>(&mut self, server: &Server<B>, text: &str) -> bool {
        let (id, body) = match decode::<ClientMsg>(text) {
            Ok(ClientMsg::Hello {
                protocol_version, ..
            }) => return self.hello(server, protocol_version).await,
            Ok(ClientMsg::Request { id, body, .. }) => (id, body),
            Err(e) => {
                let bad = ServerMsg::Error {
                    id: e.id,
                    code: ErrorCode::BadFrame,
                    message: e.message,
                };
                return self.out.send(bad).await;
            }
        };
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        let error = |code, message: &str| ServerMsg::Error {
            id: Some(id),
            code,
            message: message.into(),
        };
        if !self.greeted {
            return self
                .out
                .send(error(ErrorCode::BadRequest, "send hello first"))
                .await;
        }
        let reply = |body| ServerMsg::Reply { id, body };
        match body {
            Request::Subscribe => {
                self.subscribed = true;
                self.out.send(reply(Reply::Subscribed)).await;
                server.behaviour.subscribed(&self.out);
            }
            Request::Ping => {
                let pong = Reply::Pong {
                    agent_time: now_millis(),
                };
                self.out.send(reply(pong)).await;
            }
            Request::Cancel { request } => {
                let stopped = self
                    .streams
                    .remove(&request)
                    .is_some_and(|s| s.send(()).is_ok());
                let answer = if stopped {
                    reply(Reply::Cancelled { request })
                } else {
                    let msg = format!("no request {request} in flight on this session");
                    error(ErrorCode::NotFound, &msg)
                };
                self.out.send(answer).await;
            }
            request => {
                let ctx = Ctx {
                    id,
                    out: self.out.clone(),
                    subscribed: self.subscribed,
                };
                self.answer(server.behaviour.answer(&ctx, request), id)
                    .await;
            }
        }
        true
    }

    async fn hello<B: Behaviour>(&mut self, server: &Server<B>, version: u32) -> bool {
        if version != PROTOCOL_VERSION {
            let message = format!(
                "protocol version mismatch: client speaks {version}, agent speaks {PROTOCOL_VERSION}"
            );
            let refuse = ServerMsg::Error {
                id: None,
                code: ErrorCode::VersionMismatch,
                message,
            };
            self.out.send(refuse).await;
            return false;
        }
        self.greeted = true;
        let welcome = ServerMsg::Welcome {
            protocol_version: PROTOCOL_VERSION,
            agent_version: server.behaviour.agent_version(),
            node: server.behaviour.node(),
        };
        self.out.send(welcome).await
    }

    async fn answer(&mut self, answer: Answer, id: RequestId) {
        match answer {
            Answer::Reply(body) => {
                self.out.send(ServerMsg::Reply { id, body }).await;
            }
            Answer::Error(code, message) => {
                let e = ServerMsg::Error {
                    id: Some(id),
                    code,
                    message,
                };
                self.out.send(e).await;
            }
            Answer::ReplyThen(body, task) => {
                self.out.send(ServerMsg::Reply { id, body }).await;
                self.tasks.spawn(task);
            }
            Answer::Stream(task) => {
                let (stop, stopped) = oneshot::channel();
                self.streams.retain(|_, s| !s.is_closed());
                self.streams.insert(id, stop);
                let out = self.out.clone();
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = task => {}
                        Ok(()) = stopped => {
                            let e = ServerMsg::Error {
                                id: Some(id),
                                code: ErrorCode::Cancelled,
                                message: "cancelled by client".into(),
                            };
                            out.send(e).await;
                        }
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Echo: the dashboard tests' agent.

/// The model every [`Echo`] agent lists.
pub const MODEL_REF: &str = "/models/tiny.gguf";

/// A node whose workers come and go as asked: `Spawn` makes `wN` (loading 50 %, then ready, or
/// failed with a reason when the model's name holds `broken`), `Kill` removes it, `Infer` on a
/// serving worker echoes `echo: PROMPT` word by word (the prompt `slow` streams 10 000 words,
/// 20 ms apart, so there is time to cancel it).
#[derive(Debug, Default)]
pub struct Echo {
    workers: Arc<Mutex<EchoWorkers>>,
}

#[derive(Debug, Default)]
struct EchoWorkers {
    list: Vec<WorkerInfo>,
    next: u32,
}

impl Echo {
    /// The workers it has now.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers.lock().unwrap().list.clone()
    }

    fn has(&self, id: &str) -> bool {
        self.workers.lock().unwrap().list.iter().any(|w| w.id == id)
    }

    fn spawn(&self, ctx: &Ctx, model: &str, device: &str) -> Answer {
        let w = {
            let mut ws = self.workers.lock().unwrap();
            ws.next += 1;
            let w = echo_worker(format!("w{}", ws.next), model, device);
            ws.list.push(w.clone());
            w
        };
        let mut steps = vec![(
            WorkerState::Loading,
            "loading weights 50%".to_string(),
            None,
        )];
        if model.contains("broken") {
            let why = Some("exit status 101: corrupt weights".to_string());
            steps.push((WorkerState::Failed, "circuit breaker open".into(), why));
        } else {
            steps.push((WorkerState::Ready, String::new(), None));
        }
        let (workers, out, subscribed, id) = (
            self.workers.clone(),
            ctx.out.clone(),
            ctx.subscribed,
            w.id.clone(),
        );
        let lifecycle = async move {
            for (state, detail, last_exit) in steps {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let w = {
                    let mut ws = workers.lock().unwrap();
                    let Some(w) = ws.list.iter_mut().find(|x| x.id == id) else {
                        return;
                    };
                    w.state = state;
                    w.detail = detail;
                    w.last_exit = last_exit;
                    w.clone()
                };
                if subscribed {
                    out.send(ServerMsg::Event {
                        event: Event::WorkerState { worker: w },
                    })
                    .await;
                }
            }
        };
        Answer::ReplyThen(Reply::Spawned { worker: w }, Box::pin(lifecycle))
    }

    fn kill(&self, ctx: &Ctx, worker: String) -> Answer {
        let removed = {
            let mut ws = self.workers.lock().unwrap();
            let i = ws.list.iter().position(|w| w.id == worker);
            i.map(|i| ws.list.remove(i))
        };
        let Some(mut w) = removed else {
            return Answer::Error(ErrorCode::NotFound, format!("no worker {worker}"));
        };
        w.state = WorkerState::Exited;
        let (out, subscribed) = (ctx.out.clone(), ctx.subscribed);
        let event = async move {
            if subscribed {
                out.send(ServerMsg::Event {
                    event: Event::WorkerState { worker: w },
                })
                .await;
            }
        };
        Answer::ReplyThen(Reply::Killed { worker }, Box::pin(event))
    }

    fn infer(&self, ctx: &Ctx, worker: String, prompt: String, max: u32) -> Answer {
        // "slow" streams until cancelled; anything else echoes its words.
        let words: Vec<String> = if prompt == "slow" {
            (0..10_000).map(|i| format!("t{i} ")).collect()
        } else {
            let echo = format!("echo: {prompt}");
            let words = echo.split_inclusive(' ').map(String::from);
            words.take(max as usize).collect()
        };
        let pause = Duration::from_millis(if prompt == "slow" { 20 } else { 1 });
        let (id, out) = (ctx.id, ctx.out.clone());
        let stream = async move {
            let n = words.len() as u32;
            for text in words {
                tokio::time::sleep(pause).await;
                out.send(ServerMsg::Token { id, text }).await;
            }
            let usage = Usage {
                prompt_tokens: 3,
                generated_tokens: n,
                time_to_first_token_ms: 5.0,
                prompt_tokens_per_s: 600.0,
                decode_tokens_per_s: 99.0,
                total_ms: 20.0,
            };
            let body = Reply::InferDone {
                worker,
                finish_reason: FinishReason::Eos,
                usage,
            };
            out.send(ServerMsg::Reply { id, body }).await;
        };
        Answer::Stream(Box::pin(stream))
    }
}

fn echo_worker(id: String, model: &str, device: &str) -> WorkerInfo {
    WorkerInfo {
        id,
        model: model.into(),
        device: device.into(),
        state: WorkerState::Starting,
        pid: Some(4242),
        restarts: 0,
        last_exit: None,
        summary: None,
        heartbeat_age_ms: None,
        tokens_per_s: 0.0,
        rss_bytes: 1 << 20,
        vram_bytes: 0,
        in_flight: 0,
        detail: String::new(),
    }
}

impl Behaviour for Echo {
    fn node(&self) -> String {
        "fake-node".into()
    }

    fn agent_version(&self) -> String {
        "0.0.0-fake".into()
    }

    fn answer(&self, ctx: &Ctx, request: Request) -> Answer {
        match request {
            Request::ListModels => Answer::Reply(Reply::Models {
                models: vec![ModelEntry {
                    name: "tiny".into(),
                    reference: MODEL_REF.into(),
                    size_bytes: 1 << 20,
                    format: "gguf".into(),
                }],
            }),
            Request::ListWorkers => Answer::Reply(Reply::Workers {
                workers: self.workers(),
            }),
            Request::Status => Answer::Reply(Reply::Status {
                status: NodeStatus {
                    node: self.node(),
                    agent_version: self.agent_version(),
                    telemetry: Telemetry {
                        at: 1,
                        cpu_percent: 12.0,
                        mem_total_bytes: 8 << 30,
                        mem_used_bytes: 2 << 30,
                        disk_free_bytes: 1 << 30,
                        gpus: vec![],
                        gpu_status: "no NVIDIA driver".into(),
                        backends: vec!["cpu".into()],
                    },
                    workers: self.workers(),
                },
            }),
            Request::Spawn(spec) => self.spawn(ctx, &spec.model, &spec.device),
            Request::Restart { worker } if !self.has(&worker) => {
                Answer::Error(ErrorCode::NotFound, format!("no worker {worker}"))
            }
            Request::Kill { worker } => self.kill(ctx, worker),
            Request::Restart { worker } => Answer::Reply(Reply::Restarted { worker }),
            Request::TailLog { worker, lines } => {
                let all: Vec<String> = (1..=3).map(|i| format!("{worker} log line {i}")).collect();
                let lines = all[all.len().saturating_sub(lines)..].to_vec();
                Answer::Reply(Reply::Log { worker, lines })
            }
            Request::Metrics => Answer::Reply(Reply::Metrics {
                text: "# TYPE rbee_standin_up gauge\nrbee_standin_up 1\n# EOF\n".into(),
            }),
            Request::ReadLog { .. } => Answer::Error(
                ErrorCode::BadRequest,
                "the stand-in agent keeps no log files".into(),
            ),
            Request::Pull { .. } => Answer::Error(
                ErrorCode::BadRequest,
                "the stand-in agent pulls nothing".into(),
            ),
            Request::Infer {
                worker,
                model,
                prompt,
                params,
            } => {
                let target = self.workers().into_iter().find(|w| {
                    w.state.is_serving()
                        && (worker.as_ref() == Some(&w.id) || model.as_ref() == Some(&w.model))
                });
                match target {
                    Some(w) => self.infer(ctx, w.id, prompt, params.max_tokens),
                    None => {
                        let what = worker.or(model).unwrap_or_default();
                        Answer::Error(ErrorCode::NotFound, format!("no ready worker for {what}"))
                    }
                }
            }
            Request::Chat { .. } => Answer::Error(
                ErrorCode::BadRequest,
                "the stand-in agent does not chat".into(),
            ),
            Request::Subscribe | Request::Ping | Request::Cancel { .. } => {
                unreachable!("the stand-in answers these itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_client::{Client, ClientError, Incoming, Streamed};
    use rbee_proto::session::SpawnSpec;
    use rbee_proto::SamplingParams;

    async fn next_state(events: &mut mpsc::Receiver<Incoming>) -> WorkerInfo {
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
            match got.expect("an event within 5 s") {
                Some(Incoming::Event(Event::WorkerState { worker })) => return worker,
                Some(_) => {}
                None => panic!("session closed"),
            }
        }
    }

    #[tokio::test]
    async fn echo_agent_spawns_streams_cancels_and_kills() {
        let agent = StandIn::start("t0k").await;
        let bad = Client::connect(&agent.url(), "wrong", "test").await.err();
        assert!(
            matches!(bad, Some(ClientError::Unauthorized { .. })),
            "{bad:?}"
        );
        assert_eq!(agent.stats.refused_auth.load(Ordering::Relaxed), 1);

        let (c, mut events) = Client::connect(&agent.url(), "t0k", "test").await.unwrap();
        assert_eq!((&*c.node, &*c.agent_version), ("fake-node", "0.0.0-fake"));
        let subscribed = c.request(Request::Subscribe, None).await.unwrap();
        assert_eq!(subscribed, Reply::Subscribed);
        let spec = SpawnSpec {
            model: MODEL_REF.into(),
            device: "cpu".into(),
            threads: None,
            ..Default::default()
        };
        let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
            panic!("spawned")
        };
        assert_eq!(worker.id, "w1");
        assert_eq!(next_state(&mut events).await.state, WorkerState::Loading);
        assert_eq!(next_state(&mut events).await.state, WorkerState::Ready);

        let infer = |prompt: &str| Request::Infer {
            worker: Some("w1".into()),
            model: None,
            prompt: prompt.into(),
            params: SamplingParams::default(),
        };
        let mut s = c.start(infer("hi there"), None).await.unwrap();
        let mut text = String::new();
        loop {
            match s.next().await.expect("stream") {
                Streamed::Token(t) => text.push_str(&t),
                Streamed::Reply(Reply::InferDone { worker, .. }) => {
                    assert_eq!(worker, "w1");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(text, "echo: hi there");

        let mut slow = c.start(infer("slow"), None).await.unwrap();
        assert!(matches!(slow.next().await, Some(Streamed::Token(_))));
        slow.cancel().await.unwrap();
        loop {
            match slow.next().await.expect("the stream ends") {
                Streamed::Token(_) => {}
                Streamed::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Cancelled);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let again = c.request(Request::Cancel { request: slow.id }, None).await;
        assert_eq!(again.unwrap_err().code(), ErrorCode::NotFound);

        let kill = || Request::Kill {
            worker: "w1".into(),
        };
        let killed = c.request(kill(), None).await.unwrap();
        assert!(matches!(killed, Reply::Killed { .. }), "{killed:?}");
        assert_eq!(next_state(&mut events).await.state, WorkerState::Exited);
        let again = c.request(kill(), None).await.unwrap_err();
        assert_eq!(again.code(), ErrorCode::NotFound);
        assert!(agent.workers().is_empty());
    }
}
