//! An operator's review of the operations features (issue 15) against the real binaries: odd
//! time limits in raw frames, operator tokens added at once, a log file in a state directory not
//! made yet, rotation settings that would stall the agent, and the agent's log followed across
//! rotations.
mod common;

use std::process::Command;
use std::time::Duration;

use common::bounded;
use futures_util::{SinkExt, StreamExt};
use rbee_client::Client;
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{
    ClientIdentity, ClientMsg, Reply, Request, ServerMsg, SpawnSpec, WorkerInfo,
};
use rbee_proto::{ErrorCode, WorkerState, PROTOCOL_VERSION};
use rbee_testkit::{bin, model_path, AgentProc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw, authenticated session past its hello.
async fn raw_session(agent: &AgentProc) -> Ws {
    raw_session_as(agent, None).await
}

/// [`raw_session`], the client saying it is `identity`.
async fn raw_session_as(agent: &AgentProc, identity: Option<ClientIdentity>) -> Ws {
    let mut req = agent.url.as_str().into_client_request().unwrap();
    let bearer = format!("Bearer {}", agent.token);
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "ops-review".into(),
        identity,
    };
    ws.send(Message::text(encode(&hello))).await.unwrap();
    let Some(Ok(Message::Text(w))) = ws.next().await else {
        panic!("no welcome")
    };
    assert!(matches!(
        decode::<ServerMsg>(&w),
        Ok(ServerMsg::Welcome { .. })
    ));
    ws
}

/// Send `frame` as it is and return the frame that ends request `id` (its reply, its
/// `infer_done` or an error), skipping streamed tokens.
async fn ask_raw(ws: &mut Ws, id: u64, frame: &str) -> ServerMsg {
    ws.send(Message::text(frame.to_string())).await.unwrap();
    bounded("an answer", async {
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("session ended after {frame}")
            };
            match decode::<ServerMsg>(&t).unwrap() {
                m @ ServerMsg::Reply { id: i, .. } if i == id => return m,
                m @ ServerMsg::Error { id: Some(i), .. } if i == id => return m,
                m @ ServerMsg::Error { id: None, .. } => return m,
                _ => {}
            }
        }
    })
    .await
}

fn error_of(m: &ServerMsg) -> (ErrorCode, String) {
    match m {
        ServerMsg::Error { code, message, .. } => (*code, message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn ready_worker(c: &Client, id: &str) -> WorkerInfo {
    bounded("worker ready", async {
        loop {
            if let Ok(Reply::Workers { workers }) = c.request(Request::ListWorkers, None).await {
                if let Some(w) = workers
                    .into_iter()
                    .find(|w| w.id == id && w.state == WorkerState::Ready)
                {
                    return w;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_time_limits_in_raw_frames_get_clear_answers_and_the_session_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    let (c, _ev) = agent.connect().await;
    let spec = SpawnSpec {
        model: model_path().display().to_string(),
        threads: Some(1),
        parallel: Some(1),
        ctx: Some(256),
        ..Default::default()
    };
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!("spawn")
    };
    ready_worker(&c, &worker.id).await;
    let mut ws = raw_session(&agent).await;
    let infer = |id: u64, limits: &str| {
        format!(
            r#"{{"type":"request","id":{id},{limits}"op":"infer","worker":"{}","prompt":"Hi","params":{{"max_tokens":2}}}}"#,
            worker.id
        )
    };
    // Without any limit it generates (which checks the frame's shape); with the largest budget
    // (and the largest absolute deadline) too: no overflow.
    for (id, limits) in [
        (1, ""),
        (3, r#""timeout_ms":18446744073709551615,"#),
        (4, r#""deadline":18446744073709551615,"#),
    ] {
        let m = ask_raw(&mut ws, id, &infer(id, limits)).await;
        assert!(
            matches!(
                &m,
                ServerMsg::Reply {
                    body: Reply::InferDone { .. },
                    ..
                }
            ),
            "{limits}: {m:?}"
        );
    }
    // A zero budget: refused at once, saying so.
    let (code, msg) = error_of(&ask_raw(&mut ws, 2, &infer(2, r#""timeout_ms":0,"#)).await);
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{msg}");
    assert!(msg.contains("timeout_ms 0"), "{msg}");
    // Negative, fractional, text: a bad frame naming the field.
    for (id, limits) in [
        (5, r#""timeout_ms":-5,"#),
        (6, r#""timeout_ms":1.5,"#),
        (7, r#""timeout_ms":"soon","#),
        (8, r#""timeout_ms":18446744073709551616,"#),
    ] {
        let (code, msg) = error_of(&ask_raw(&mut ws, id, &infer(id, limits)).await);
        assert_eq!(code, ErrorCode::BadFrame, "{limits}: {msg}");
        assert!(msg.contains("timeout_ms"), "{limits}: {msg}");
    }
    // An old client's absolute deadline already past by this agent's clock: refused, naming
    // the fix.
    let (code, msg) = error_of(&ask_raw(&mut ws, 9, &infer(9, r#""deadline":1,"#)).await);
    assert_eq!(code, ErrorCode::DeadlineExceeded, "{msg}");
    assert!(msg.contains("send timeout_ms instead"), "{msg}");
    // Log reads with no lines and with every line: answered, nothing breaks.
    for (id, lines) in [(10, "0"), (11, "18446744073709551615")] {
        let frame = format!(
            r#"{{"type":"request","id":{id},"op":"read_log","worker":"{}","lines":{lines}}}"#,
            worker.id
        );
        let m = ask_raw(&mut ws, id, &frame).await;
        let ServerMsg::Reply {
            body: Reply::LogLines { lines: got, .. },
            ..
        } = &m
        else {
            panic!("read_log {lines}: {m:?}")
        };
        assert_eq!(got.is_empty(), lines == "0", "{got:?}");
    }
    // The session still serves.
    let m = ask_raw(&mut ws, 12, &infer(12, r#""timeout_ms":60000,"#)).await;
    assert!(
        matches!(
            &m,
            ServerMsg::Reply {
                body: Reply::InferDone { .. },
                ..
            }
        ),
        "{m:?}"
    );
}

fn token_cmd(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("rbee-agent"))
        .arg("--state-dir")
        .arg(state)
        .arg("token")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_tokens_added_at_once_all_log_in() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fresh/state");
    // Sixteen operators at once, on a state directory no agent made yet.
    let adds: Vec<_> = (0..16)
        .map(|i| {
            let state = state.clone();
            std::thread::spawn(move || {
                let out = token_cmd(&state, &["add", &format!("op{i}")]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            })
        })
        .collect();
    let tokens: Vec<String> = adds.into_iter().map(|t| t.join().unwrap()).collect();
    let listed = String::from_utf8(token_cmd(&state, &["list"]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 16, "lost tokens: {listed}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory token add made");
    // Every token shown is one the agent accepts.
    let agent = AgentProc::start(&state, &[]);
    for t in &tokens {
        Client::connect(&agent.url, t, "ops-review")
            .await
            .unwrap_or_else(|e| panic!("token {t} refused: {e}"));
    }
    // A file others may read: nobody is admitted by it, `token list` says the fix.
    let ops = state.join("operators.json");
    std::fs::set_permissions(&ops, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Client::connect(&agent.url, &tokens[0], "ops-review")
        .await
        .is_err());
    let out = token_cmd(&state, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    assert!(agent.log().contains("chmod 600"), "{}", agent.log());
    std::fs::set_permissions(&ops, std::fs::Permissions::from_mode(0o600)).unwrap();
    Client::connect(&agent.url, &tokens[0], "ops-review")
        .await
        .unwrap();
    // Revoking someone unknown names where to look.
    let out = token_cmd(&state, &["revoke", "nobody"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rbee-agent token list"),
        "{err}"
    );
}

/// Run the agent with `args` until it listens (true) or exits (false), with what it said.
fn agent_starts(args: &[&str], state: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(bin("rbee-agent"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = state.join("agent.addr");
    let started =
        rbee_testkit::wait_for(Duration::from_secs(30), "agent to listen or exit", || {
            if addr.exists() {
                return Some(true);
            }
            child.try_wait().unwrap().map(|_| false)
        });
    if started {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (started, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_log_file_in_a_state_directory_not_made_yet_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("new/state");
    let log = state.join("agent.log");
    let (started, said) = agent_starts(&["--log-file", log.to_str().unwrap()], &state);
    assert!(started, "{said}");
    // The file is opened before the agent listens; what reaches it before the test stops the
    // agent (at its first sign of listening) depends on the machine's load, so only its
    // existence is certain.
    assert!(log.is_file(), "{} was not made: {said}", log.display());
    assert!(state.is_dir());
}

#[test]
fn rotation_settings_that_would_stall_the_agent_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[logs]\nmax_bytes = 4096\nkeep = 1000000000\n").unwrap();
    let (started, said) = agent_starts(
        &["--config", conf.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert!(!started);
    assert!(
        said.contains("logs.keep") && said.contains("at most"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_log_followed_across_rotations_misses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[logs]\nmax_bytes = 4096\nkeep = 3\n").unwrap();
    let log = dir.path().join("agent.log");
    let agent = AgentProc::start(
        &state,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    let (c, _ev) = agent.connect().await;
    let read = |after: Option<u64>| Request::ReadLog {
        worker: None,
        lines: 10_000,
        after,
    };
    let Reply::LogLines { mut next, .. } = c.request(read(None), None).await.unwrap() else {
        panic!("read_log")
    };
    // Each session logs a line naming its port; enough of them to rotate the file once or
    // twice between two reads (three rotated files are kept, so none is gone yet).
    let mut seen = String::new();
    for round in 0..3 {
        for _ in 0..12 {
            let (s, _e) = agent.connect().await;
            assert!(s.request(Request::Ping, None).await.is_ok());
        }
        let Reply::LogLines {
            lines,
            next: n,
            skipped,
        } = c.request(read(Some(next)), None).await.unwrap()
        else {
            panic!("read_log")
        };
        assert_eq!(skipped, 0, "round {round}");
        next = n;
        seen.push_str(&lines.join("\n"));
        seen.push('\n');
    }
    assert!(
        std::fs::metadata(rbee_host::rotate::rotated(&log, 1)).is_ok(),
        "the log never rotated: the test proves nothing"
    );
    // Each session's line exactly once: none lost at a rotation, none read twice.
    assert_eq!(seen.matches("session started").count(), 36, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_agent_log_lines_through_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let agent = AgentProc::start(
        &dir.path().join("state"),
        &["--log-file", log.to_str().unwrap()],
    );
    let forged = "2026-11-30T00:00:00.000000Z  INFO rbee_agent::server::handshake: session \
                  started peer=10.0.0.9:1 who=alice@laptop (rbee-tui/0.1.0) with operator alice";
    let identity = ClientIdentity {
        tool: "rbee-tui/0.1.0".into(),
        os_user: "eve".into(),
        host: format!("box\n{forged}\n{}", "x".repeat(100_000)),
        ..Default::default()
    };
    let mut ws = raw_session_as(&agent, Some(identity)).await;
    let m = ask_raw(&mut ws, 1, r#"{"type":"request","id":1,"op":"ping"}"#).await;
    assert!(matches!(m, ServerMsg::Reply { .. }), "{m:?}");
    // A model name quoting the same line, in a spawn that is refused and audited.
    let (c, _ev) = agent.connect().await;
    let spec = SpawnSpec {
        model: format!("/nowhere/m.gguf\n{forged}"),
        ..Default::default()
    };
    assert!(c.request(Request::Spawn(spec), None).await.is_err());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("m.gguf\\x0a2026-11-30T00:00:00"),
        "the refused spawn is not in agent.log:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-11-30T00:00:00")),
        "a forged line in agent.log:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("eve@box"))
        .expect("the session's line");
    assert!(line.len() < 1000, "{} bytes", line.len());
    // The audit log's entries carry the same, bounded.
    let audit = agent.audit();
    let auth = audit.lines().find(|l| l.contains("auth_ok")).unwrap();
    assert!(auth.len() < 2000 && auth.contains("eve@box"), "{auth:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_agent_stopped_fails_at_once_not_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(&dir.path().join("state"), &[]);
    let (c, mut ev) = agent.connect().await;
    assert!(c.request(Request::Ping, None).await.is_ok());
    agent.signal_and_wait(libc::SIGTERM);
    // The session's end has been seen by the client.
    bounded("the session's end", async {
        while let Some(m) = ev.recv().await {
            if matches!(m, rbee_client::Incoming::Closed(_)) {
                break;
            }
        }
    })
    .await;
    // A follower's next poll, with a budget of ten minutes: refused now (`session closed`), not
    // after ten minutes (`bounded` fails the test long before that).
    let r = bounded(
        "an answer from a closed session",
        c.request(Request::Ping, Some(Duration::from_secs(600))),
    )
    .await;
    let e = r.unwrap_err();
    assert!(e.to_string().contains("session closed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_writing_megabyte_lines_does_not_fill_the_agents_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 400 lines of 1 MiB each, then `done`, then idle.
    let worker = common::script(
        dir.path(),
        "megabyte-lines",
        "i=0; while [ $i -lt 400 ]; do head -c 1048576 /dev/zero | tr '\\0' x >&2; echo >&2; \
         i=$((i+1)); done; echo done >&2; exec sleep 100000",
    );
    let agent = common::start_agent(&[], &dir.path().join("state"), &worker, &[]);
    let (c, _ev) = agent.connect().await;
    let before = common::rss_bytes(agent.pid());
    let spec = SpawnSpec {
        model: model_path().display().to_string(),
        ..Default::default()
    };
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!("spawn")
    };
    let read = || Request::ReadLog {
        worker: Some(worker.id.clone()),
        lines: 2,
        after: None,
    };
    let lines = bounded("the writer to finish", async {
        loop {
            if let Ok(Reply::LogLines { lines, .. }) = c.request(read(), None).await {
                if lines.last().is_some_and(|l| l == "done") {
                    return lines;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        lines[0].ends_with("more bytes of this line not shown]"),
        "{:.80}",
        lines[0]
    );
    let after = common::rss_bytes(agent.pid());
    let grown = after.saturating_sub(before) >> 20;
    // 400 MiB of lines went through; the last 1 000 lines are kept, each cut to 60 KiB.
    assert!(grown < 120, "agent memory grew {grown} MiB");
    // The file (rotated at 8 MiB) has them whole.
    let file = agent.state_dir.join(format!("logs/{}.log", worker.id));
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.lines().any(|l| l.len() == 1 << 20),
        "no whole line in the file"
    );
}
