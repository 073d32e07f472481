//! The bad-input catalogue: one test per kind of bad input a real `rbee-agent` (with real
//! `rbee-worker`s on the real small model) can receive. Each asserts the exact error the caller
//! sees (code and message) and that the agent keeps serving afterwards: a new session lists
//! workers, and for worker-level cases the same worker still answers an inference.
//!
//! Disk full on a model pull lives with the other pull tests, which need their loopback model hub:
//! `agent/tests/pull.rs`, `pull_that_does_not_fit_on_disk_is_refused_before_any_byte`.
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rbee_client::{Client, ClientError, Incoming, Streamed};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::{ErrorCode, ProtoError, SamplingParams, WorkerState, MAX_FRAME_BYTES};
use rbee_testkit::{bin, model_dir, model_path, AgentProc};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const FAST: &str = "heartbeat_ms = 300\ntelemetry_ms = 200\nstop_grace_ms = 1000\n";
/// Every wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

fn agent_with(config: &str, extra: &[&str]) -> (tempfile::TempDir, AgentProc) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = AgentProc::start(&dir.path().join("state"), &args);
    (dir, agent)
}

fn spec() -> SpawnSpec {
    SpawnSpec {
        model: model_path().display().to_string(),
        device: "cpu".into(),
        threads: Some(1),
        ..Default::default()
    }
}

/// The error an agent answered with; panics on anything else.
fn agent_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ProtoError {
    match r {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A fresh session is accepted and answers `list_workers` and `ping`.
async fn still_serving(agent: &AgentProc) -> Vec<WorkerInfo> {
    let (c, _ev) = bounded("connect", agent.connect()).await;
    assert!(matches!(
        bounded("ping", c.request(Request::Ping, None))
            .await
            .unwrap(),
        Reply::Pong { .. }
    ));
    let Reply::Workers { workers } = bounded("list", c.request(Request::ListWorkers, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    workers
}

async fn wait_worker(
    ev: &mut mpsc::Receiver<Incoming>,
    id: &str,
    pred: impl Fn(&WorkerInfo) -> bool,
) -> WorkerInfo {
    bounded(&format!("worker {id}"), async {
        loop {
            match ev.recv().await {
                Some(Incoming::Event(Event::WorkerState { worker }))
                    if worker.id == id && pred(&worker) =>
                {
                    return worker
                }
                Some(Incoming::Closed(r)) => panic!("session closed while waiting: {r}"),
                None => panic!("session closed while waiting"),
                _ => {}
            }
        }
    })
    .await
}

async fn spawn_ready(c: &Client, ev: &mut mpsc::Receiver<Incoming>, spec: SpawnSpec) -> WorkerInfo {
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!()
    };
    wait_worker(ev, &worker.id, |w| w.state == WorkerState::Ready).await
}

fn infer(worker: &str, prompt: &str, max_tokens: u32) -> Request {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..Default::default()
    };
    Request::Infer {
        worker: Some(worker.into()),
        model: None,
        prompt: prompt.into(),
        params,
    }
}

/// The worker still generates: a short inference ends with `infer_done`.
async fn worker_answers(c: &Client, worker: &str) {
    let r = bounded(
        "infer",
        c.request(infer(worker, "The capital of France is", 4), None),
    )
    .await;
    match r {
        Ok(Reply::InferDone {
            worker: w, usage, ..
        }) => {
            assert_eq!(w, worker);
            assert_eq!(usage.generated_tokens, 4);
        }
        other => panic!("worker {worker} should still answer, got {other:?}"),
    }
}

/// Next session-level error (no request id) on the event channel.
async fn next_session_error(ev: &mut mpsc::Receiver<Incoming>) -> ProtoError {
    bounded("session error", async {
        loop {
            match ev.recv().await {
                Some(Incoming::Error(e)) => return e,
                Some(Incoming::Event(_)) => continue,
                other => panic!("expected an error frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Send a WebSocket upgrade by hand; returns the whole HTTP response.
async fn raw_upgrade(agent: &AgentProc, auth: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agent.url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = bounded("401 response", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated WebSocket with no handshake done: for frames `Client` cannot send.
async fn raw_ws(agent: &AgentProc) -> RawWs {
    let mut req = agent.url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", agent.token).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn raw_next(ws: &mut RawWs) -> Option<serde_json::Value> {
    bounded("raw frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
}

// ------------------------------------------------------------------------------------ auth

#[tokio::test]
async fn wrong_token_gets_401_and_an_audit_line() {
    let (_d, agent) = agent_with("", &[]);
    let e = Client::connect(&agent.url, "not-the-token", "t")
        .await
        .err()
        .expect("must be refused");
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("agent at {} refused the token (HTTP 401)", agent.url)
    );
    let resp = raw_upgrade(&agent, Some("Bearer also-wrong")).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.ends_with("missing or wrong bearer token"), "{resp}");
    assert_eq!(
        agent.audit().matches("session with wrong token").count(),
        2,
        "{}",
        agent.audit()
    );
    still_serving(&agent).await;
}

#[tokio::test]
async fn missing_token_gets_401_and_an_audit_line() {
    let (_d, agent) = agent_with("", &[]);
    let resp = raw_upgrade(&agent, None).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.ends_with("missing or wrong bearer token"), "{resp}");
    // A scheme other than Bearer is as good as none.
    let resp = raw_upgrade(&agent, Some(&format!("Basic {}", agent.token))).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let e = Client::connect(&agent.url, "", "t")
        .await
        .err()
        .expect("must be refused");
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
    let log = agent.audit();
    assert_eq!(
        log.matches("session with missing token").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("\"auth_failed\"").count(), 3, "{log}");
    still_serving(&agent).await;
}

// ------------------------------------------------------------------------------ handshake

#[tokio::test]
async fn version_mismatch_names_both_versions() {
    let (_d, agent) = agent_with("", &[]);
    let e = agent_error(
        Client::connect_with_version(&agent.url, &agent.token, "t", 999)
            .await
            .map(|_| ()),
    );
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    assert_eq!(
        e.message,
        "version mismatch: client speaks protocol 999, agent speaks protocol 2"
    );
    assert!(agent.audit().contains("\"session_refused\""));
    still_serving(&agent).await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let (_d, agent) = agent_with("", &[]);
    let mut ws = raw_ws(&agent).await;
    ws.send(Message::text(r#"{"type":"request","id":1,"op":"ping"}"#))
        .await
        .unwrap();
    let v = raw_next(&mut ws).await.expect("an error frame");
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "bad_frame");
    assert_eq!(v["message"], "the first frame must be hello");
    assert!(
        raw_next(&mut ws).await.is_none(),
        "the agent closes the session"
    );
    still_serving(&agent).await;
}

// ------------------------------------------------------------------------------ frames

#[tokio::test]
async fn malformed_json_is_a_bad_frame() {
    let (_d, agent) = agent_with("", &[]);
    let (c, mut ev) = agent.connect().await;
    c.send_raw("{this is not json").await.unwrap();
    let e = next_session_error(&mut ev).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert_eq!(
        e.message,
        "not JSON: key must be a string at line 1 column 2"
    );
    // The same session goes on.
    assert!(matches!(
        c.request(Request::Ping, None).await.unwrap(),
        Reply::Pong { .. }
    ));
    still_serving(&agent).await;
}

#[tokio::test]
async fn binary_frame_is_refused() {
    let (_d, agent) = agent_with("", &[]);
    let mut ws = raw_ws(&agent).await;
    ws.send(Message::text(
        r#"{"type":"hello","protocol_version":2,"client":"raw"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(raw_next(&mut ws).await.unwrap()["type"], "welcome");
    ws.send(Message::binary(
        br#"{"type":"request","id":1,"op":"ping"}"#.to_vec(),
    ))
    .await
    .unwrap();
    let v = raw_next(&mut ws).await.unwrap();
    assert_eq!(
        (v["code"].as_str(), v["id"].is_null()),
        (Some("bad_frame"), true),
        "{v}"
    );
    assert_eq!(
        v["message"],
        "binary frames are not part of the protocol; send JSON text"
    );
    // A second hello is refused too, and the session still answers requests.
    ws.send(Message::text(
        r#"{"type":"hello","protocol_version":2,"client":"raw"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        raw_next(&mut ws).await.unwrap()["message"],
        "hello was already received"
    );
    ws.send(Message::text(r#"{"type":"request","id":2,"op":"ping"}"#))
        .await
        .unwrap();
    let v = raw_next(&mut ws).await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["id"].as_u64(), v["reply"].as_str()),
        (Some("reply"), Some(2), Some("pong")),
        "{v}"
    );
    still_serving(&agent).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_not_executed() {
    let (_d, agent) = agent_with("", &[]);
    let (c, mut ev) = agent.connect().await;
    let big = format!(
        r#"{{"type":"request","id":5,"op":"ping","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let mut rx = c.watch_id(5);
    c.send_raw(&big).await.unwrap();
    // The refusal carries the request's id, so the request that was too big is answered.
    let e = match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(Streamed::Error(e))) => e,
        other => panic!("expected an error for request 5, got {other:?}"),
    };
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert_eq!(
        e.message,
        format!(
            "frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}",
            big.len()
        )
    );
    // Nothing ran: a later request on the same session is answered, and id 5 got nothing else.
    assert!(matches!(
        c.request(Request::Ping, None).await.unwrap(),
        Reply::Pong { .. }
    ));
    assert!(
        rx.try_recv().is_err(),
        "an oversized frame must not be executed"
    );
    // One without an id is refused on the session's error channel.
    let big = format!(
        r#"{{"type":"request","op":"ping","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    c.send_raw(&big).await.unwrap();
    let e = next_session_error(&mut ev).await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.message.contains("exceeds the limit"), "{}", e.message);
    still_serving(&agent).await;
}

#[tokio::test]
async fn unknown_request_type_is_a_bad_frame_under_its_id() {
    let (_d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let mut rx = c.watch_id(4242);
    c.send_raw(r#"{"type":"request","id":4242,"op":"launch_rockets"}"#)
        .await
        .unwrap();
    match bounded("error for 4242", rx.recv()).await {
        Some(Streamed::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(
                e.message.starts_with(
                    "unknown variant `launch_rockets`, expected one of `list_models`, `spawn`"
                ),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error for id 4242, got {other:?}"),
    }
    // An unknown op of nearly a frame is answered under its id too, with a short message.
    let op = "z".repeat(MAX_FRAME_BYTES - 100);
    let mut rx = c.watch_id(4243);
    c.send_raw(&format!(r#"{{"type":"request","id":4243,"op":"{op}"}}"#))
        .await
        .unwrap();
    match bounded("error for 4243", rx.recv()).await {
        Some(Streamed::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(
                e.message.starts_with("unknown variant `zzz")
                    && e.message.ends_with("… (truncated)"),
                "{}",
                &e.message[..60]
            );
        }
        other => panic!("expected an error for id 4243, got {other:?}"),
    }
    still_serving(&agent).await;
}

// ------------------------------------------------------------------------------ requests

#[tokio::test]
async fn unknown_worker_id_is_not_found() {
    let (_d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let want = "no worker `w999` on this node";
    for req in [
        Request::Kill {
            worker: "w999".into(),
        },
        Request::Restart {
            worker: "w999".into(),
        },
        Request::TailLog {
            worker: "w999".into(),
            lines: 10,
        },
        infer("w999", "hi", 1),
    ] {
        let e = agent_error(c.request(req.clone(), None).await);
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, want),
            "{req:?}"
        );
    }
    let e = agent_error(c.request(Request::Cancel { request: 77 }, None).await);
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            ErrorCode::NotFound,
            "no request 77 in flight on this session"
        )
    );
    assert!(still_serving(&agent).await.is_empty());
}

#[tokio::test]
async fn model_path_outside_the_store_is_refused() {
    let (_d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let store = model_dir().display().to_string();
    let spawn = |model: String| {
        Request::Spawn(SpawnSpec {
            model,
            device: "cpu".into(),
            threads: None,
            ..Default::default()
        })
    };
    let e = agent_error(c.request(spawn("/etc/passwd".into()), None).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message
            .starts_with("model `/etc/passwd` is outside the model store ("),
        "{}",
        e.message
    );
    assert!(e.message.contains(&store), "{}", e.message);
    // `..` does not climb out of the store.
    let sneaky = format!("{store}/../../../../../../etc/passwd");
    let e = agent_error(c.request(spawn(sneaky.clone()), None).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message
            .starts_with(&format!("model `{sneaky}` is outside the model store")),
        "{}",
        e.message
    );
    // A file that is not there is not found.
    let e = agent_error(c.request(spawn(format!("{store}/nope.gguf")), None).await);
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message
            .starts_with(&format!("model `{store}/nope.gguf` not found: ")),
        "{}",
        e.message
    );
    // And a device that does not exist is refused before anything starts.
    let e = agent_error(
        c.request(
            Request::Spawn(SpawnSpec {
                device: "tpu".into(),
                ..spec()
            }),
            None,
        )
        .await,
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            ErrorCode::BadRequest,
            "device `tpu` is not auto, cpu or cuda:N"
        )
    );
    // Slots and context a worker cannot honour are refused with the range.
    for (parallel, ctx, said) in [
        (Some(0), None, "parallel = 0 is out of range: 1 to 64"),
        (Some(65), None, "parallel = 65 is out of range: 1 to 64"),
        (None, Some(10), "ctx = 10 is too small: at least 64 tokens"),
    ] {
        let e = agent_error(
            c.request(
                Request::Spawn(SpawnSpec {
                    parallel,
                    ctx,
                    ..spec()
                }),
                None,
            )
            .await,
        );
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with(said), "{}", e.message);
    }
    assert!(agent.audit().matches("\"spawn_refused\"").count() >= 7);
    assert!(
        still_serving(&agent).await.is_empty(),
        "nothing was spawned"
    );
}

#[tokio::test]
async fn gpu_that_is_not_there_is_refused() {
    let (_d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let e = agent_error(
        c.request(
            Request::Spawn(SpawnSpec {
                device: "cuda:99".into(),
                ..spec()
            }),
            None,
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    // Which of the two depends on the machine: no NVIDIA driver at all, or fewer GPUs than 100.
    assert!(
        e.message
            == "no GPU on this node (NVIDIA driver not available); cannot use cuda:99: spawn with \
                --device auto or cpu"
            || (e.message.starts_with("GPU 99 does not exist on this node")
                && e.message.ends_with("use one of them or --device auto")),
        "{}",
        e.message
    );
    assert!(
        still_serving(&agent).await.is_empty(),
        "nothing was spawned"
    );
}

#[tokio::test]
async fn corrupt_model_file_fails_the_worker_once_with_the_load_error() {
    let store = tempfile::tempdir().unwrap();
    let corrupt = store.path().join("corrupt.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let (_d, agent) = agent_with(FAST, &["--model-dir", store.path().to_str().unwrap()]);
    let (c, mut ev) = agent.subscribed().await;
    let Reply::Spawned { worker } = c
        .request(
            Request::Spawn(SpawnSpec {
                model: corrupt.display().to_string(),
                device: "cpu".into(),
                threads: Some(1),
                ..Default::default()
            }),
            None,
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    let failed = wait_worker(&mut ev, &worker.id, |w| w.state == WorkerState::Failed).await;
    // A corrupt file is not retried: no restart, and the worker's own load error is shown.
    assert_eq!(failed.restarts, 0, "{failed:?}");
    assert!(
        !failed.detail.is_empty() && failed.last_exit.as_deref() == Some(failed.detail.as_str()),
        "{failed:?}"
    );
    let want = format!(
        "corrupt or unreadable model {}: tensor `",
        corrupt.display()
    );
    assert!(failed.detail.starts_with(&want), "{failed:?}");
    assert!(
        failed.detail.ends_with(&format!(
            "but the file has {} bytes (truncated?)",
            bytes.len() / 2
        )),
        "{failed:?}"
    );
    assert!(agent.audit().contains("\"load_failed\""));
    // Inference on it is refused with its state named.
    let e = agent_error(c.request(infer(&worker.id, "hi", 1), None).await);
    assert_eq!(
        (e.code, e.message),
        (
            ErrorCode::Busy,
            format!("worker `{}` is failed, not ready", worker.id)
        )
    );
    // The agent keeps serving: a good worker next to it loads and answers.
    let good = spawn_ready(&c, &mut ev, spec()).await;
    worker_answers(&c, &good.id).await;
    assert_eq!(still_serving(&agent).await.len(), 2);
}

#[tokio::test]
async fn prompt_over_the_context_is_refused_and_the_worker_keeps_serving() {
    let (_d, agent) = agent_with(FAST, &[]);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev, spec()).await;
    let context = w.summary.as_ref().unwrap().context_length as usize;
    let prompt = " hello".repeat(context + 64);
    let e = agent_error(bounded("long prompt", c.request(infer(&w.id, &prompt, 8), None)).await);
    assert_eq!(e.code, ErrorCode::PromptTooLong);
    assert!(e.message.starts_with("prompt has "), "{}", e.message);
    assert!(
        e.message.ends_with(&format!(
            "tokens but the context holds {context} (and at least one must be generated)"
        )),
        "{}",
        e.message
    );
    worker_answers(&c, &w.id).await;
    assert_eq!(still_serving(&agent).await[0].state, WorkerState::Ready);
}

#[tokio::test]
async fn deadline_already_passed_is_refused_before_the_worker_sees_it() {
    let (_d, agent) = agent_with(FAST, &[]);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev, spec()).await;
    // An older client's absolute deadline is still read, by the agent's clock; one already
    // passed is refused naming that clock and the field to send instead.
    let past = rbee_proto::now_millis() - 1000;
    let op =
        serde_json::json!({"op": "infer", "worker": w.id, "prompt": "The capital of France is"});
    for (id, body) in [
        (9001u64, op),
        (9002, serde_json::json!({"op": "list_workers"})),
    ] {
        let mut frame = body;
        frame["type"] = "request".into();
        frame["id"] = id.into();
        frame["deadline"] = past.into();
        let mut rx = c.watch_id(id);
        c.send_raw(&frame.to_string()).await.unwrap();
        let e = match bounded("refusal", rx.recv()).await {
            Some(Streamed::Error(e)) => e,
            other => panic!("expected a refusal of request {id}, got {other:?}"),
        };
        assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{e}");
        assert!(
            e.message
                .starts_with("deadline already passed when the request arrived")
                && e.message.contains("send timeout_ms"),
            "{e}"
        );
    }
    // A zero budget has passed too.
    let zero = r#"{"type":"request","id":9003,"timeout_ms":0,"op":"list_workers"}"#;
    let mut rx = c.watch_id(9003);
    c.send_raw(zero).await.unwrap();
    assert!(matches!(
        bounded("zero budget", rx.recv()).await,
        Some(Streamed::Error(ProtoError {
            code: ErrorCode::DeadlineExceeded,
            ..
        }))
    ));
    worker_answers(&c, &w.id).await;
    let workers = still_serving(&agent).await;
    assert_eq!(
        (workers[0].state, workers[0].in_flight),
        (WorkerState::Ready, 0)
    );
}

#[tokio::test]
async fn full_queue_answers_busy_at_once() {
    let (_d, agent) = agent_with(&format!("{FAST}worker_queue = 1\n"), &[]);
    let (c, mut ev) = agent.subscribed().await;
    // One slot: a second request waits in the queue instead of decoding beside the first.
    let one_slot = SpawnSpec {
        parallel: Some(1),
        ..spec()
    };
    let w = spawn_ready(&c, &mut ev, one_slot).await;
    let long = || {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: 4000,
            ignore_eos: true,
            ..Default::default()
        };
        Request::Infer {
            worker: Some(w.id.clone()),
            model: None,
            prompt: "Count: 1, 2, 3,".into(),
            params,
        }
    };
    // One running (its first token has arrived), one queued: the queue of one is full.
    let mut running = c.start(long(), None).await.unwrap();
    assert!(matches!(
        bounded("first token", running.next()).await,
        Some(Streamed::Token(_))
    ));
    let queued = c.start(long(), None).await.unwrap();
    let t = std::time::Instant::now();
    let e = agent_error(bounded("busy", c.request(long(), None)).await);
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::Busy, "worker queue is full; retry later")
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "busy must be answered at once, took {:?}",
        t.elapsed()
    );
    // Nothing already accepted is lost: both end, cancelled by us.
    for s in [&running, &queued] {
        s.cancel().await.unwrap();
    }
    for mut s in [running, queued] {
        let end = bounded("cancelled stream end", async {
            loop {
                match s.next().await {
                    Some(Streamed::Token(_)) => continue,
                    other => return other,
                }
            }
        })
        .await;
        match end {
            Some(Streamed::Error(e)) => assert_eq!(e.code, ErrorCode::Cancelled, "{e}"),
            other => panic!("expected cancelled, got {other:?}"),
        }
    }
    worker_answers(&c, &w.id).await;
    still_serving(&agent).await;
}

// ------------------------------------------------------------------------------ worker frames

/// A worker that writes garbage on its stdout (bytes that are not UTF-8, a line over the frame
/// limit, JSON that is no frame) before behaving: the agent skips each bad line, counts it, and
/// follows the worker as usual.
#[tokio::test]
async fn garbage_on_worker_stdout_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("noisy-worker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '\\377\\376 not utf-8\\n'\nhead -c {} /dev/zero | tr '\\0' x\necho\necho '{{\"type\":\"launch_rockets\"}}'\nexec '{}' \"$@\"\n",
            MAX_FRAME_BYTES * 3,
            bin("rbee-worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let agent = AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.path().join("state"),
        &wrapper,
        &[],
        &[],
    );
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev, spec()).await;
    worker_answers(&c, &w.id).await;
    let metrics = http_get(&agent, "/metrics").await;
    assert!(
        metrics.contains("rbee_errors_total{kind=\"bad_worker_frame\"} 3"),
        "{metrics}"
    );
    assert_eq!(still_serving(&agent).await[0].restarts, 0);
}

async fn http_get(agent: &AgentProc, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agent.url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            agent.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bad_sampling_is_refused_by_name_before_routing() {
    let (_d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let infer = |params: SamplingParams| Request::Infer {
        worker: None,
        model: Some("no-such-model".into()),
        prompt: "Hi".into(),
        params,
    };
    // repeat_penalty 0 used to reach the worker and come back as `internal` with a backtrace.
    for penalty in [0.0f32, -2.0] {
        let params = SamplingParams {
            repeat_penalty: penalty,
            ..Default::default()
        };
        let e = agent_error(c.request(infer(params), None).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
        assert!(
            e.message
                .starts_with("`repeat_penalty` must be a number above 0"),
            "{}",
            e.message
        );
    }
    // NaN travels as JSON null: named, not "invalid type: null".
    let params = SamplingParams {
        temperature: f64::NAN,
        ..Default::default()
    };
    let e = agent_error(c.request(infer(params), None).await);
    assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
    assert!(
        e.message
            .starts_with("`temperature` must be a number from 0 to 2")
            && e.message.contains("NaN"),
        "{}",
        e.message
    );
    let params = SamplingParams {
        top_k: Some(0),
        ..Default::default()
    };
    let e = agent_error(c.request(infer(params), None).await);
    assert!(e.message.starts_with("`top_k`"), "{}", e.message);
    // Valid parameters reach routing (and find no such model).
    let e = agent_error(c.request(infer(SamplingParams::default()), None).await);
    assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    still_serving(&agent).await;
}

#[tokio::test]
async fn hub_references_and_paths_cannot_leave_the_store_or_probe_it() {
    let (d, agent) = agent_with("", &[]);
    let (c, _ev) = agent.connect().await;
    let spawn = |model: String| {
        Request::Spawn(SpawnSpec {
            model,
            device: "cpu".into(),
            threads: Some(1),
            ..Default::default()
        })
    };
    // A loadable model outside every model dir: an `hf:` FILE or REVISION part must not reach it.
    let outside = d.path().join("outside.gguf");
    std::fs::copy(model_path(), &outside).unwrap();
    let o = outside.display();
    for (r, why) in [
        (
            format!("hf:org/repo:{o}"),
            "the file part must not be an absolute path",
        ),
        (
            format!("hf:org/repo:../../../../../../../..{o}"),
            "the file part must not contain `.` or `..` components",
        ),
        (
            "hf:org/repo@../../x:m.gguf".to_string(),
            "the revision part must not contain `.` or `..` components",
        ),
        (
            "hf:org/repo:a\\b.gguf".to_string(),
            "the file part must not contain a backslash",
        ),
    ] {
        let e = agent_error(c.request(spawn(r.clone()), None).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{r}: {}", e.message);
        assert!(
            e.message.starts_with("invalid model reference") && e.message.contains(why),
            "{r}: {}",
            e.message
        );
    }
    // A path outside the store gets the same answer whether it exists or not.
    let answer = |p: &str| {
        let c = &c;
        let p = p.to_string();
        async move {
            let e = agent_error(c.request(spawn(p.clone()), None).await);
            (e.code, e.message.replace(&p, "PATH"))
        }
    };
    let missing = d.path().join("missing.gguf").display().to_string();
    assert_eq!(answer(&o.to_string()).await, answer(&missing).await);
    assert_eq!(
        answer("/etc/passwd").await,
        answer("/etc/no-such-file").await
    );
    let (code, message) = answer("/etc/no-such-file").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        message.starts_with("model `PATH` is outside the model store"),
        "{message}"
    );
    assert!(
        still_serving(&agent).await.is_empty(),
        "nothing was spawned"
    );
}
