//! The HTTP side (axum): routes, bearer auth, and the two generation endpoints, answered as one
//! JSON object or as server-sent events ending with `data: [DONE]`. A stream's status is chosen
//! when its first token (or its error) is known, so a request refused after a retry still gets
//! a real HTTP error. Dropping the response (the client went away) cancels the job on its worker.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::gateway::error::ApiError;
use crate::gateway::hub::HubHandle;
use crate::gateway::job::{Cmd, GenEvent, Job, JobId};
use crate::gateway::keys::ApiKeys;
use crate::gateway::openai::{self, AnswerId, Endpoint, GenRequest};
use crate::gateway::stats::{AuditLine, Snapshot};

/// What every handler shares.
pub struct Shared {
    /// The scheduler.
    pub hub: HubHandle,
    /// Accepted keys; `None`: no auth (loopback only).
    pub keys: Option<ApiKeys>,
    /// Longest a request may take, queue and spawn included.
    pub timeout: Duration,
    /// Request numbers.
    pub next: AtomicU64,
}

type St = State<Arc<Shared>>;

/// Largest request body: long conversations fit, a runaway upload does not.
pub const BODY_LIMIT: usize = 32 << 20;

/// The gateway's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// The key's id (`None` without keys), or the 401; refusals are audited.
fn auth(shared: &Shared, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(keys) = &shared.keys else {
        return Ok(None);
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    keys.check(value).map(Some).map_err(|why| {
        let e = ApiError::unauthorized(why);
        refused(shared, None, String::new(), "", "", &e);
        e
    })
}

/// Audit a request answered before it reached the scheduler.
fn refused(
    shared: &Shared,
    key: Option<String>,
    client: String,
    endpoint: &'static str,
    model: &str,
    e: &ApiError,
) {
    let line = AuditLine {
        at: rbee_proto::now_millis(),
        key,
        client,
        endpoint,
        model: model.into(),
        outcome: e.code.into(),
        ..AuditLine::default()
    };
    let _ = shared.hub.cmds.send(Cmd::Audit(Box::new(line)));
}

async fn snapshot(shared: &Shared) -> Result<Snapshot, ApiError> {
    let (tx, rx) = oneshot::channel();
    let gone = || {
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway's scheduler stopped",
        )
    };
    shared
        .hub
        .cmds
        .send(Cmd::Snapshot(tx))
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// Up when at least one node is; the nodes' states either way.
async fn health(State(shared): St) -> Response {
    let snap = match snapshot(&shared).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let nodes: Vec<Value> = snap
        .cluster
        .nodes
        .iter()
        .map(|n| {
            json!({"name": n.name, "up": n.up, "reason": n.reason,
                   "workers": n.workers.len(), "models": n.models.len()})
        })
        .collect();
    let up = snap.cluster.nodes.iter().any(|n| n.up);
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if up { "ok" } else { "no_node" }, "nodes": nodes,
                      "waiting": snap.waiting, "running": snap.running});
    (status, Json(body)).into_response()
}

async fn metrics(State(shared): St, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&shared, &headers) {
        return e.into_response();
    }
    match cluster_metrics(&shared).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Longest a scrape waits for the nodes; a node that has not answered by then shows as down.
const SCRAPE_WAIT: Duration = Duration::from_secs(5);

/// Every node's exposition labelled `node`, `rbee_node_up` for each, then the gateway's own.
async fn cluster_metrics(shared: &Shared) -> Result<String, ApiError> {
    use crate::gateway::job::ScrapeMsg;
    use crate::gateway::relay::{render, NodeScrape};
    let gone = || {
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway's scheduler stopped",
        )
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.hub.cmds.send(Cmd::Metrics(tx)).map_err(|_| gone())?;
    let Some(ScrapeMsg::Snapshot(snap)) = rx.recv().await else {
        return Err(gone());
    };
    let mut nodes: Vec<NodeScrape> = snap
        .cluster
        .nodes
        .iter()
        .map(|n| NodeScrape {
            node: n.name.clone(),
            text: Err("no answer in time".into()),
        })
        .collect();
    let mut left = nodes.len();
    let until = tokio::time::Instant::now() + SCRAPE_WAIT;
    while left > 0 {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(ScrapeMsg::Node(i, text))) => {
                if let Some(n) = nodes.get_mut(i) {
                    n.text = text;
                    left -= 1;
                }
            }
            Ok(Some(ScrapeMsg::Snapshot(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    Ok(render(&nodes, &snap.metrics()))
}

async fn models(State(shared): St, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&shared, &headers) {
        return e.into_response();
    }
    match snapshot(&shared).await {
        Ok(s) => Json(s.models()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model(State(shared): St, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = auth(&shared, &headers) {
        return e.into_response();
    }
    match snapshot(&shared).await {
        Ok(s) if s.cluster.knows(&id) => Json(s.model(&id)).into_response(),
        Ok(s) => ApiError::model_not_found(&id, &s.cluster.model_names()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn chat(
    State(shared): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate(shared, Endpoint::Chat, peer, headers, body).await
}

async fn completions(
    State(shared): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate(shared, Endpoint::Completion, peer, headers, body).await
}

/// Cancels its job when dropped before the job ended (the client went away).
struct CancelOnDrop {
    id: JobId,
    cmds: mpsc::UnboundedSender<Cmd>,
    ended: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.cmds.send(Cmd::Cancel(self.id));
        }
    }
}

async fn generate(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key_id = match auth(&shared, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let req = match openai::parse(endpoint, &body) {
        Ok(r) => r,
        Err(e) => {
            let name = match endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completion => "completion",
            };
            refused(&shared, key_id, peer.to_string(), name, "", &e);
            return e.into_response();
        }
    };
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        id,
        endpoint,
        model: req.model.clone(),
        input: req.input.clone(),
        params: req.params.clone(),
        keep_alive: req.keep_alive,
        timeout: shared.timeout,
        client: peer.to_string(),
        key_id,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if shared
        .hub
        .cmds
        .send(Cmd::Generate(Box::new(job), tx))
        .is_err()
    {
        return ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway's scheduler stopped",
        )
        .into_response();
    }
    let mut guard = CancelOnDrop {
        id,
        cmds: shared.hub.cmds.clone(),
        ended: false,
    };
    let answer = AnswerId::new(endpoint, &req.model, id);
    // Wait for the first token, the end, or the refusal: that decides the status.
    let first = loop {
        match rx.recv().await {
            Some(GenEvent::Started { .. }) => continue,
            Some(ev) => break ev,
            None => {
                guard.ended = true;
                return ApiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the request ended without an answer",
                )
                .into_response();
            }
        }
    };
    if let GenEvent::Failed(e) = first {
        guard.ended = true;
        return e.into_response();
    }
    if req.stream {
        stream_response(answer, req, first, rx, guard)
    } else {
        whole_response(answer, first, rx, guard).await
    }
}

async fn whole_response(
    answer: AnswerId,
    first: GenEvent,
    mut rx: mpsc::UnboundedReceiver<GenEvent>,
    mut guard: CancelOnDrop,
) -> Response {
    let mut text = String::new();
    let mut next = Some(first);
    loop {
        let ev = match next.take() {
            Some(ev) => Some(ev),
            None => rx.recv().await,
        };
        match ev {
            Some(GenEvent::Token(t)) => text.push_str(&t),
            Some(GenEvent::Started { .. }) => {}
            Some(GenEvent::Done { finish, usage }) => {
                guard.ended = true;
                return Json(answer.complete(&text, finish, &usage)).into_response();
            }
            Some(GenEvent::Failed(e)) => {
                guard.ended = true;
                return e.into_response();
            }
            None => {
                guard.ended = true;
                return ApiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the request ended without an answer",
                )
                .into_response();
            }
        }
    }
}

/// One SSE event carrying `v`.
fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The state of one SSE answer as it is written.
struct Streaming {
    answer: AnswerId,
    include_usage: bool,
    first: bool,
    pending: Option<GenEvent>,
    rx: mpsc::UnboundedReceiver<GenEvent>,
    guard: CancelOnDrop,
    over: bool,
}

impl Streaming {
    /// The bytes for the next event; `None` once the answer is complete.
    async fn next(&mut self) -> Option<Bytes> {
        if self.over {
            return None;
        }
        loop {
            let ev = match self.pending.take() {
                Some(ev) => Some(ev),
                None => self.rx.recv().await,
            };
            let out = match ev {
                Some(GenEvent::Started { .. }) => continue,
                Some(GenEvent::Token(text)) => {
                    let mut out =
                        sse(&self
                            .answer
                            .chunk(&text, self.first, None, self.include_usage));
                    self.first = false;
                    // Tokens that are already here go out in the same write.
                    loop {
                        match self.rx.try_recv() {
                            Ok(GenEvent::Token(t)) => out.push_str(&sse(&self.answer.chunk(
                                &t,
                                false,
                                None,
                                self.include_usage,
                            ))),
                            Ok(other) => {
                                self.pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    out
                }
                Some(GenEvent::Done { finish, usage }) => {
                    self.over = true;
                    self.guard.ended = true;
                    let mut out =
                        sse(&self
                            .answer
                            .chunk("", self.first, Some(finish), self.include_usage));
                    if self.include_usage {
                        out.push_str(&sse(&self.answer.usage_chunk(&usage)));
                    }
                    out.push_str("data: [DONE]\n\n");
                    out
                }
                Some(GenEvent::Failed(e)) => {
                    // Headers are gone; OpenAI's clients raise on an `error` event.
                    self.over = true;
                    self.guard.ended = true;
                    sse(&e.body())
                }
                None => {
                    self.over = true;
                    self.guard.ended = true;
                    return None;
                }
            };
            return Some(Bytes::from(out));
        }
    }
}

fn stream_response(
    answer: AnswerId,
    req: GenRequest,
    first: GenEvent,
    rx: mpsc::UnboundedReceiver<GenEvent>,
    guard: CancelOnDrop,
) -> Response {
    let state = Streaming {
        answer,
        include_usage: req.include_usage,
        first: true,
        pending: Some(first),
        rx,
        guard,
        over: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        s.next().await.map(|b| (Ok::<_, Infallible>(b), s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
