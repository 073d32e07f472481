//! Sessions: accept TCP, authenticate before the WebSocket upgrade (or serve `/metrics`), run the
//! handshake, then answer requests and push events until either side leaves.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientMsg, Event, NodeStatus, Reply, Request, ServerMsg, Telemetry};
use rbee_proto::{ErrorCode, ProtoError, RequestId, WorkerId, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Sessions get this long to send `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let sessions = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    sessions.spawn(async move {
                        if let Err(e) = handle_connection(stream, peer, shared, shutdown).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    sessions.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
}

fn token_ok(header: Option<&str>, token: &str) -> bool {
    let Some(h) = header else { return false };
    let Some(given) = h.strip_prefix("Bearer ") else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// Read the request head without consuming it, so the WebSocket handshake can still read it.
async fn peek_head(stream: &TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout")
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let head = peek_head(&stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(&head);
    let path = req.path.unwrap_or("").to_string();
    let is_upgrade = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    if path == "/metrics" && !is_upgrade {
        let auth = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(h.value).ok());
        let ok = token_ok(auth, &shared.token);
        let (status, body) = if ok {
            ("200 OK", shared.metrics.render(&shared.supervisor.states()))
        } else {
            shared.audit.record(
                "auth_failed",
                Some(peer.to_string()),
                None,
                "GET /metrics with missing or wrong token",
            );
            (
                "401 Unauthorized",
                "missing or wrong bearer token\n".to_string(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // Consume the request head we peeked, then answer.
        let mut sink = vec![0u8; head.len()];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut sink).await;
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(());
    }

    let authorized = Arc::new(AtomicBool::new(false));
    let auth_flag = authorized.clone();
    let cb_shared = shared.clone();
    let callback = move |req: &HttpRequest, resp: Response| -> Result<Response, ErrorResponse> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token_ok(auth, &cb_shared.token) {
            auth_flag.store(true, Ordering::SeqCst);
            Ok(resp)
        } else {
            // Recorded before the 401 goes out, so the log is complete once the client knows.
            cb_shared.metrics.error("unauthorized");
            let what = if auth.is_some() { "wrong" } else { "missing" };
            cb_shared.audit.record(
                "auth_failed",
                Some(peer.to_string()),
                None,
                format!("session with {what} token"),
            );
            let mut r = ErrorResponse::new(Some("missing or wrong bearer token".into()));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            Err(r)
        }
    };
    let mut config = WebSocketConfig::default();
    // Larger than our frame limit so an oversized frame gets a protocol error reply, not a drop.
    config.max_message_size = Some(MAX_FRAME_BYTES * 16);
    config.max_frame_size = Some(MAX_FRAME_BYTES * 16);
    config.read_buffer_size = rbee_proto::WS_READ_BUFFER_BYTES;
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    if !authorized.load(Ordering::SeqCst) {
        return Ok(());
    }
    let ws = ws?;
    shared.audit.record(
        "auth_ok",
        Some(peer.to_string()),
        None,
        "session authenticated",
    );
    shared.metrics.session();
    run_session(ws, peer, shared, shutdown).await
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// In-flight inferences of one session: client id → (worker, worker-side id).
type Inflight = Arc<Mutex<HashMap<RequestId, (WorkerId, u64)>>>;

async fn run_session(
    ws: Ws,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = ws.split();
    // Handshake: the first frame must be Hello with our protocol version.
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, source.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => decode::<ClientMsg>(&t),
        _ => return Ok(()),
    };
    let refuse = |code: ErrorCode, message: String| {
        encode(&ServerMsg::Error {
            id: None,
            code,
            message,
        })
    };
    match hello {
        Ok(ClientMsg::Hello {
            protocol_version,
            client,
        }) if protocol_version == PROTOCOL_VERSION => {
            tracing::info!(%peer, %client, "session started");
        }
        Ok(ClientMsg::Hello {
            protocol_version, ..
        }) => {
            let msg = format!("version mismatch: client speaks protocol {protocol_version}, agent speaks protocol {PROTOCOL_VERSION}");
            shared.metrics.error("version_mismatch");
            shared
                .audit
                .record("session_refused", Some(peer.to_string()), None, msg.clone());
            sink.send(Message::text(refuse(ErrorCode::VersionMismatch, msg)))
                .await?;
            let _ = sink.close().await;
            return Ok(());
        }
        Ok(_) => {
            sink.send(Message::text(refuse(
                ErrorCode::BadFrame,
                "the first frame must be hello".into(),
            )))
            .await?;
            let _ = sink.close().await;
            return Ok(());
        }
        Err(e) => {
            sink.send(Message::text(refuse(
                ErrorCode::BadFrame,
                format!("bad hello: {}", e.message),
            )))
            .await?;
            let _ = sink.close().await;
            return Ok(());
        }
    }
    sink.send(Message::text(encode(&ServerMsg::Welcome {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        node: shared.node.clone(),
    })))
    .await?;

    let (out_tx, out_rx) = mpsc::channel::<ServerMsg>(1024);
    let subscribed = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        shared.events.subscribe(),
        shared.telemetry.clone(),
        subscribed.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    let inflight: Inflight = Arc::default();
    let peer_s = peer.to_string();

    loop {
        let msg = tokio::select! {
            m = source.next() => m,
            _ = shutdown.cancelled() => break,
        };
        let Some(Ok(msg)) = msg else { break };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let _ = out_tx
                    .send(ServerMsg::Error {
                        id: None,
                        code: ErrorCode::BadFrame,
                        message: "binary frames are not part of the protocol; send JSON text"
                            .into(),
                    })
                    .await;
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let (id, deadline, body) = match decode::<ClientMsg>(&text) {
            Ok(ClientMsg::Request { id, deadline, body }) => (id, deadline, body),
            Ok(ClientMsg::Hello { .. }) => {
                let _ = out_tx
                    .send(ServerMsg::Error {
                        id: None,
                        code: ErrorCode::BadFrame,
                        message: "hello was already received".into(),
                    })
                    .await;
                continue;
            }
            Err(e) => {
                shared.metrics.error("bad_frame");
                let _ = out_tx
                    .send(ServerMsg::Error {
                        id: e.id,
                        code: ErrorCode::BadFrame,
                        message: e.message,
                    })
                    .await;
                continue;
            }
        };
        if let Some(d) = deadline {
            if rbee_proto::now_millis() >= d {
                shared.metrics.error("deadline_exceeded");
                let _ = out_tx
                    .send(ServerMsg::Error {
                        id: Some(id),
                        code: ErrorCode::DeadlineExceeded,
                        message: "deadline already passed when the request arrived".into(),
                    })
                    .await;
                continue;
            }
        }
        if matches!(body, Request::Subscribe) {
            subscribed.store(true, Ordering::SeqCst);
            // Start from the truth: the current workers and the latest telemetry.
            for w in shared.supervisor.list() {
                let _ = out_tx
                    .send(ServerMsg::Event {
                        event: Event::WorkerState { worker: w },
                    })
                    .await;
            }
            let t = shared.telemetry.borrow().clone();
            let _ = out_tx
                .send(ServerMsg::Event {
                    event: Event::Telemetry { telemetry: t },
                })
                .await;
            let _ = out_tx
                .send(ServerMsg::Reply {
                    id,
                    body: Reply::Subscribed,
                })
                .await;
            continue;
        }
        let (shared, out, inflight, peer) = (
            shared.clone(),
            out_tx.clone(),
            inflight.clone(),
            peer_s.clone(),
        );
        tokio::spawn(async move {
            let result = handle_request(&shared, &out, &inflight, &peer, id, deadline, body).await;
            match result {
                Ok(Some(body)) => {
                    let _ = out.send(ServerMsg::Reply { id, body }).await;
                }
                Ok(None) => {}
                Err(e) => {
                    shared.metrics.error(e.code.as_str());
                    let _ = out
                        .send(ServerMsg::Error {
                            id: Some(id),
                            code: e.code,
                            message: e.message,
                        })
                        .await;
                }
            }
        });
    }
    // The session is gone: its inferences are cancelled down to the worker.
    for (_, (worker, req)) in inflight.lock().unwrap().drain() {
        shared.supervisor.cancel(&worker, req);
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    tracing::info!(%peer, "session ended");
    Ok(())
}

async fn handle_request(
    shared: &Arc<Shared>,
    out: &mpsc::Sender<ServerMsg>,
    inflight: &Inflight,
    peer: &str,
    id: RequestId,
    deadline: Option<rbee_proto::UnixMillis>,
    body: Request,
) -> Result<Option<Reply>, ProtoError> {
    let sup = &shared.supervisor;
    Ok(Some(match body {
        Request::Ping => Reply::Pong {
            agent_time: rbee_proto::now_millis(),
        },
        Request::ListModels => {
            let mut models = crate::models::list(&shared.config.model_dirs);
            models.extend(crate::models::list_hf_cache(
                hf_hub::Cache::from_env().path(),
            ));
            Reply::Models { models }
        }
        Request::ListWorkers => Reply::Workers {
            workers: sup.list(),
        },
        Request::Spawn(spec) => Reply::Spawned {
            worker: sup.spawn(spec, Some(peer.into()))?,
        },
        Request::Kill { worker } => {
            sup.kill(&worker, Some(peer.into())).await?;
            Reply::Killed { worker }
        }
        Request::Restart { worker } => {
            sup.restart(&worker, Some(peer.into())).await?;
            Reply::Restarted { worker }
        }
        Request::TailLog { worker, lines } => Reply::Log {
            lines: sup.tail_log(&worker, lines.min(10_000))?,
            worker,
        },
        Request::Status => Reply::Status {
            status: NodeStatus {
                node: shared.node.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                telemetry: shared.telemetry.borrow().clone(),
                workers: sup.list(),
            },
        },
        Request::Infer {
            worker,
            model,
            prompt,
            params,
        } => {
            let (w, req) = sup.infer(
                out.clone(),
                id,
                worker.as_deref(),
                model.as_deref(),
                prompt,
                params,
                deadline,
            )?;
            let mut map = inflight.lock().unwrap();
            if map.len() > 256 {
                map.retain(|_, (w, r)| sup.is_pending(w, *r));
            }
            map.insert(id, (w, req));
            return Ok(None); // tokens and the final reply come from the worker's task
        }
        Request::Cancel { request } => {
            let target = inflight.lock().unwrap().get(&request).cloned();
            match target {
                Some((w, req)) if sup.cancel(&w, req) => Reply::Cancelled { request },
                _ => {
                    return Err(ProtoError::new(
                        ErrorCode::NotFound,
                        format!("no request {request} in flight on this session"),
                    ))
                }
            }
        }
        Request::Subscribe => Reply::Subscribed,
        Request::Pull { model } => {
            shared
                .audit
                .record("pull", Some(peer.into()), None, model.clone());
            let events = shared.events.clone();
            let m = model.clone();
            let pulled = tokio::task::spawn_blocking(move || crate::pull::pull(&m, &events))
                .await
                .map_err(|e| ProtoError::new(ErrorCode::Internal, format!("pull task: {e}")))?;
            match pulled {
                Ok(p) => {
                    shared.audit.record(
                        "pulled",
                        Some(peer.into()),
                        None,
                        format!("{model} -> {}", p.path.display()),
                    );
                    Reply::Pulled {
                        model,
                        path: p.path.display().to_string(),
                        downloaded_bytes: p.downloaded_bytes,
                    }
                }
                Err(e) => {
                    shared.audit.record(
                        "pull_failed",
                        Some(peer.into()),
                        None,
                        format!("{model}: {}", e.message),
                    );
                    return Err(e);
                }
            }
        }
    }))
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut out: mpsc::Receiver<ServerMsg>,
    mut events: broadcast::Receiver<Event>,
    mut telemetry: watch::Receiver<Telemetry>,
    subscribed: Arc<AtomicBool>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            m = out.recv() => match m {
                Some(m) => m,
                None => break,
            },
            e = events.recv() => match e {
                Ok(event) if subscribed.load(Ordering::Relaxed) => ServerMsg::Event { event },
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Too slow for the event stream: skip ahead, then resend the truth.
                    tracing::debug!("session lagged by {n} events; resyncing");
                    if subscribed.load(Ordering::Relaxed) {
                        for w in shared.supervisor.list() {
                            if sink.send(Message::text(encode(&ServerMsg::Event { event: Event::WorkerState { worker: w } }))).await.is_err() {
                                return;
                            }
                        }
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            c = telemetry.changed() => {
                if c.is_err() { break; }
                if !subscribed.load(Ordering::Relaxed) { continue; }
                // Latest sample wins: a slow session never queues old telemetry.
                let t = telemetry.borrow_and_update().clone();
                ServerMsg::Event { event: Event::Telemetry { telemetry: t } }
            }
            _ = shutdown.cancelled() => {
                // Let replies already queued (errors ending streams) go out first.
                while let Ok(m) = out.try_recv() {
                    let _ = sink.send(Message::text(encode(&m))).await;
                }
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        };
        if sink.send(Message::text(encode(&msg))).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}
