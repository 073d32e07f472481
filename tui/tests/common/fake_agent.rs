//! A small stand-in for `rbee-agent` that speaks the real protocol over a real socket, so the
//! dashboard's sessions and the subcommands can be tested without models or GPUs. It checks the
//! bearer token, answers every request, and pushes worker events to subscribed sessions.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{
    ClientMsg, Event, ModelEntry, NodeStatus, Reply, Request, ServerMsg, Telemetry, WorkerInfo,
};
use rbee_proto::{ErrorCode, FinishReason, Usage, WorkerState, PROTOCOL_VERSION};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

pub const MODEL_REF: &str = "/models/tiny.gguf";

#[derive(Default)]
struct Shared {
    workers: Vec<WorkerInfo>,
    next: u32,
}

pub struct FakeAgent {
    pub addr: SocketAddr,
    pub token: String,
    shared: Arc<Mutex<Shared>>,
    tasks: JoinSet<()>,
}

impl FakeAgent {
    pub async fn start(token: &str) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), token, Arc::default()).await
    }

    /// Start again on the same address, keeping the workers (an agent restart).
    pub async fn restart(self) -> Self {
        let (addr, token, shared) = (self.addr, self.token.clone(), self.shared.clone());
        drop(self);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Self::start_at(addr, &token, shared).await
    }

    async fn start_at(addr: SocketAddr, token: &str, shared: Arc<Mutex<Shared>>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let (tok, sh) = (token.to_string(), shared.clone());
        tasks.spawn(async move {
            // Connections live in this set, so dropping the agent closes them all.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(serve(stream, tok.clone(), sh.clone()));
            }
        });
        Self {
            addr,
            token: token.into(),
            shared,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.shared.lock().unwrap().workers.clone()
    }
}

fn new_worker(id: String, model: &str, device: &str) -> WorkerInfo {
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

// The handshake callback's error type is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn serve(stream: tokio::net::TcpStream, token: String, shared: Arc<Mutex<Shared>>) {
    let expected = format!("Bearer {token}");
    let check = move |req: &HttpRequest, resp: Response| -> Result<Response, ErrorResponse> {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(expected.as_str());
        if ok {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("unauthorized".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            Err(e)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<ServerMsg>(256);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(Message::text(encode(&m))).await.is_err() {
                return;
            }
        }
    });
    let mut subscribed = false;
    let mut cancels: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let (id, body) = match decode::<ClientMsg>(&text) {
            Ok(ClientMsg::Hello {
                protocol_version, ..
            }) => {
                let m = if protocol_version == PROTOCOL_VERSION {
                    ServerMsg::Welcome {
                        protocol_version,
                        agent_version: "0.0.0-fake".into(),
                        node: "fake-node".into(),
                    }
                } else {
                    ServerMsg::Error {
                        id: None,
                        code: ErrorCode::VersionMismatch,
                        message: "version".into(),
                    }
                };
                let _ = out.send(m).await;
                continue;
            }
            Ok(ClientMsg::Request { id, body, .. }) => (id, body),
            Err(e) => {
                let _ = out
                    .send(ServerMsg::Error {
                        id: e.id,
                        code: ErrorCode::BadFrame,
                        message: e.message,
                    })
                    .await;
                continue;
            }
        };
        let reply = |body| ServerMsg::Reply { id, body };
        let error = |code, message: String| ServerMsg::Error {
            id: Some(id),
            code,
            message,
        };
        let event = |event| ServerMsg::Event { event };
        match body {
            Request::Subscribe => {
                subscribed = true;
                let _ = out.send(reply(Reply::Subscribed)).await;
            }
            Request::Ping => {
                let _ = out
                    .send(reply(Reply::Pong {
                        agent_time: rbee_proto::now_millis(),
                    }))
                    .await;
            }
            Request::ListModels => {
                let models = vec![ModelEntry {
                    name: "tiny".into(),
                    reference: MODEL_REF.into(),
                    size_bytes: 1 << 20,
                    format: "gguf".into(),
                }];
                let _ = out.send(reply(Reply::Models { models })).await;
            }
            Request::ListWorkers => {
                let workers = shared.lock().unwrap().workers.clone();
                let _ = out.send(reply(Reply::Workers { workers })).await;
            }
            Request::Status => {
                let workers = shared.lock().unwrap().workers.clone();
                let telemetry = Telemetry {
                    at: 1,
                    cpu_percent: 12.0,
                    mem_total_bytes: 8 << 30,
                    mem_used_bytes: 2 << 30,
                    disk_free_bytes: 1 << 30,
                    gpus: vec![],
                    gpu_status: "no NVIDIA driver".into(),
                };
                let status = NodeStatus {
                    node: "fake-node".into(),
                    agent_version: "0.0.0-fake".into(),
                    telemetry,
                    workers,
                };
                let _ = out.send(reply(Reply::Status { status })).await;
            }
            Request::Spawn(spec) => {
                let w = {
                    let mut sh = shared.lock().unwrap();
                    sh.next += 1;
                    let w = new_worker(format!("w{}", sh.next), &spec.model, &spec.device);
                    sh.workers.push(w.clone());
                    w
                };
                let _ = out.send(reply(Reply::Spawned { worker: w.clone() })).await;
                // The lifecycle: loading with progress, then ready (or failed for a broken model).
                let (out2, shared2, subscribed2) = (out.clone(), shared.clone(), subscribed);
                tasks.spawn(async move {
                    let mut steps = vec![(
                        WorkerState::Loading,
                        "loading weights 50%".to_string(),
                        None,
                    )];
                    if spec.model.contains("broken") {
                        steps.push((
                            WorkerState::Failed,
                            "circuit breaker open".into(),
                            Some("exit status 101: corrupt weights".to_string()),
                        ));
                    } else {
                        steps.push((WorkerState::Ready, String::new(), None));
                    }
                    for (state, detail, last_exit) in steps {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        let w = {
                            let mut sh = shared2.lock().unwrap();
                            let Some(w) = sh.workers.iter_mut().find(|x| x.id == w.id) else {
                                return;
                            };
                            w.state = state;
                            w.detail = detail;
                            w.last_exit = last_exit;
                            w.clone()
                        };
                        if subscribed2 {
                            let _ = out2
                                .send(ServerMsg::Event {
                                    event: Event::WorkerState { worker: w },
                                })
                                .await;
                        }
                    }
                });
            }
            Request::Kill { worker } | Request::Restart { worker }
                if !shared
                    .lock()
                    .unwrap()
                    .workers
                    .iter()
                    .any(|w| w.id == worker) =>
            {
                let _ = out
                    .send(error(ErrorCode::NotFound, format!("no worker {worker}")))
                    .await;
            }
            Request::Kill { worker } => {
                let w = {
                    let mut sh = shared.lock().unwrap();
                    let i = sh.workers.iter().position(|w| w.id == worker).unwrap();
                    let mut w = sh.workers.remove(i);
                    w.state = WorkerState::Exited;
                    w
                };
                let _ = out.send(reply(Reply::Killed { worker })).await;
                if subscribed {
                    let _ = out.send(event(Event::WorkerState { worker: w })).await;
                }
            }
            Request::Restart { worker } => {
                let _ = out.send(reply(Reply::Restarted { worker })).await;
            }
            Request::TailLog { worker, lines } => {
                let all: Vec<String> = (1..=3).map(|i| format!("{worker} log line {i}")).collect();
                let lines = all[all.len().saturating_sub(lines)..].to_vec();
                let _ = out.send(reply(Reply::Log { worker, lines })).await;
            }
            Request::Pull { .. } => {
                let _ = out
                    .send(ServerMsg::Error {
                        id: Some(id),
                        code: ErrorCode::BadRequest,
                        message: "the fake agent pulls nothing".into(),
                    })
                    .await;
            }
            Request::Cancel { request } => {
                if let Some(tx) = cancels.remove(&request) {
                    let _ = tx.send(());
                }
                let _ = out.send(reply(Reply::Cancelled { request })).await;
            }
            Request::Infer {
                worker,
                model,
                prompt,
                params,
            } => {
                let target = {
                    let sh = shared.lock().unwrap();
                    sh.workers
                        .iter()
                        .find(|w| {
                            w.state.is_serving()
                                && (worker.as_ref() == Some(&w.id)
                                    || model.as_ref() == Some(&w.model))
                        })
                        .map(|w| w.id.clone())
                };
                let Some(target) = target else {
                    let what = worker.or(model).unwrap_or_default();
                    let _ = out
                        .send(error(
                            ErrorCode::NotFound,
                            format!("no ready worker for {what}"),
                        ))
                        .await;
                    continue;
                };
                let (tx, mut cancel) = oneshot::channel();
                cancels.insert(id, tx);
                let out2 = out.clone();
                tasks.spawn(async move {
                    // "slow" streams until cancelled; anything else echoes its words.
                    let words: Vec<String> = if prompt == "slow" {
                        (0..10_000).map(|i| format!("t{i} ")).collect()
                    } else {
                        let echo = format!("echo: {prompt}");
                        let n = echo.split_inclusive(' ').count();
                        echo.split_inclusive(' ').take((params.max_tokens as usize).min(n)).map(String::from).collect()
                    };
                    let n = words.len() as u32;
                    for w in words {
                        tokio::select! {
                            _ = &mut cancel => {
                                let _ = out2.send(ServerMsg::Error { id: Some(id), code: ErrorCode::Cancelled, message: "cancelled by client".into() }).await;
                                return;
                            }
                            _ = tokio::time::sleep(Duration::from_millis(if prompt == "slow" { 20 } else { 1 })) => {}
                        }
                        let _ = out2.send(ServerMsg::Token { id, text: w }).await;
                    }
                    let usage = Usage { prompt_tokens: 3, generated_tokens: n, time_to_first_token_ms: 5.0, prompt_tokens_per_s: 600.0, decode_tokens_per_s: 99.0, total_ms: 20.0 };
                    let _ = out2.send(ServerMsg::Reply { id, body: Reply::InferDone { worker: target, finish_reason: FinishReason::Eos, usage } }).await;
                });
            }
        }
    }
}
