//! End-to-end: the real `rbee-agent` binary, real WebSockets on loopback, real `rbee-worker`
//! processes on the real small model.
use std::time::Duration;

use rbee_client::{Client, Incoming, Streamed};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::{ErrorCode, SamplingParams, WorkerState};
use rbee_testkit::{alive, model_path, AgentProc};
use tokio::sync::mpsc;

const FAST: &str = "heartbeat_ms = 300\ntelemetry_ms = 200\nstop_grace_ms = 1000\n[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\nmax_restarts = 10\nbreaker_failures = 3\nbreaker_window_secs = 60\n";

fn agent_with(config: &str) -> (tempfile::TempDir, AgentProc) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let state = dir.path().join("state");
    let agent = AgentProc::start(&state, &["--config", cfg.to_str().unwrap()]);
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

/// Wait for a WorkerState event of `id` matching `pred`.
async fn wait_worker(
    ev: &mut mpsc::Receiver<Incoming>,
    id: &str,
    limit: Duration,
    pred: impl Fn(&WorkerInfo) -> bool,
) -> WorkerInfo {
    let fut = async {
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
    };
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for worker {id}"))
}

async fn spawn_ready(c: &Client, ev: &mut mpsc::Receiver<Incoming>) -> WorkerInfo {
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec()), None).await.unwrap() else {
        panic!()
    };
    wait_worker(ev, &worker.id, Duration::from_secs(60), |w| {
        w.state == WorkerState::Ready
    })
    .await
}

async fn infer_text(
    c: &Client,
    worker: &str,
    prompt: &str,
    max_tokens: u32,
) -> (String, u32, Reply) {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..Default::default()
    };
    let mut s = c
        .start(
            Request::Infer {
                worker: Some(worker.into()),
                model: None,
                prompt: prompt.into(),
                params,
            },
            None,
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut pieces = 0;
    loop {
        match s.next().await.expect("stream ended") {
            Streamed::Token(t) => {
                pieces += 1;
                text.push_str(&t)
            }
            Streamed::Reply(r) => return (text, pieces, r),
            Streamed::Error(e) => panic!("infer failed: {e}"),
        }
    }
}

// Bad input (tokens, versions, malformed frames, unknown ids, paths outside the store, …) has its
// own catalogue, one test per case: agent/tests/bad_input.rs.

/// An inference and a chat for the model by the NAME `models list` prints (one name everywhere).
async fn answers_by_listed_name(
    c: &rbee_client::Client,
    models: &[rbee_proto::session::ModelEntry],
    params: &SamplingParams,
) {
    let name = models
        .iter()
        .find(|m| m.reference.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .map(|m| m.name.clone())
        .expect("the model is listed");
    for request in [
        Request::Infer {
            worker: None,
            model: Some(name.clone()),
            prompt: "Hi".into(),
            params: params.clone(),
        },
        Request::Chat {
            worker: None,
            model: Some(name.clone()),
            messages: vec![rbee_proto::ChatMessage {
                role: rbee_proto::Role::User,
                content: "Hi".into(),
            }],
            params: params.clone(),
        },
    ] {
        let r = c.request(request, None).await;
        assert!(
            matches!(r, Ok(Reply::InferDone { .. })),
            "by name {name}: {r:?}"
        );
    }
}

#[tokio::test]
async fn spawn_ready_infer_streams_tokens_and_kill() {
    let (_d, agent) = agent_with(FAST);
    let (c, mut ev) = agent.subscribed().await;
    let Reply::Models { models } = c.request(Request::ListModels, None).await.unwrap() else {
        panic!()
    };
    assert!(
        models
            .iter()
            .any(|m| m.format == "gguf" && m.size_bytes > 50_000_000),
        "{models:?}"
    );
    let w = spawn_ready(&c, &mut ev).await;
    let summary = w.summary.clone().expect("ready worker reports its model");
    assert_eq!(summary.architecture, "llama");
    assert!(summary.context_length >= 2048);
    let (text, pieces, done) = infer_text(&c, &w.id, "The capital of France is", 16).await;
    assert!(
        pieces >= 8,
        "tokens must stream one by one, got {pieces} pieces: {text:?}"
    );
    assert!(text.contains("Paris"), "{text:?}");
    let Reply::InferDone { usage, .. } = done else {
        panic!("{done:?}")
    };
    assert_eq!(usage.generated_tokens, 16);
    // Same request, same text.
    let (again, _, _) = infer_text(&c, &w.id, "The capital of France is", 16).await;
    assert_eq!(text, again);
    // Infer by model name picks the ready worker.
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 4,
        ..Default::default()
    };
    let file = model_path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let r = c
        .request(
            Request::Infer {
                worker: None,
                model: Some(file),
                prompt: "Hi".into(),
                params: params.clone(),
            },
            None,
        )
        .await
        .unwrap();
    assert!(matches!(r, Reply::InferDone { .. }), "{r:?}");
    answers_by_listed_name(&c, &models, &params).await;

    let pid = w.pid.unwrap();
    assert_eq!(
        c.request(
            Request::Kill {
                worker: w.id.clone()
            },
            None
        )
        .await
        .unwrap(),
        Reply::Killed {
            worker: w.id.clone()
        }
    );
    rbee_testkit::wait_for(Duration::from_secs(5), "worker to exit", || {
        (!alive(pid)).then_some(())
    });
    let Reply::Workers { workers } = c.request(Request::ListWorkers, None).await.unwrap() else {
        panic!()
    };
    assert!(workers.is_empty());
    let log = agent.audit();
    assert!(
        log.contains("\"spawn\"") && log.contains("\"kill\""),
        "{log}"
    );
}

#[tokio::test]
async fn cancel_stops_generation_and_metrics_count_it() {
    let (_d, agent) = agent_with(FAST);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev).await;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 2000,
        // Thousands of tokens unless stopped: the end of sequence must not finish it first.
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = c
        .start(
            Request::Infer {
                worker: Some(w.id.clone()),
                model: None,
                prompt: "Count: 1, 2, 3, 4, 5, 6, 7,".into(),
                params,
            },
            None,
        )
        .await
        .unwrap();
    let mut n = 0;
    while n < 3 {
        match s.next().await {
            Some(Streamed::Token(_)) => n += 1,
            other => panic!("expected tokens, got {other:?}"),
        }
    }
    s.cancel().await.unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap()
            .unwrap()
        {
            Streamed::Token(_) => n += 1,
            other => break other,
        }
    };
    match end {
        Streamed::Error(e) => assert_eq!(e.code, ErrorCode::Cancelled),
        other => panic!("expected cancelled, got {other:?}"),
    }
    assert!(
        n < 200,
        "generation should stop promptly after cancel, got {n} tokens"
    );
    // A deadline that passes mid-generation stops it too.
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 2000,
        // Thousands of tokens unless stopped: the end of sequence must not finish it first.
        ignore_eos: true,
        ..Default::default()
    };
    let deadline = Duration::from_millis(300);
    let e = c
        .request(
            Request::Infer {
                worker: Some(w.id.clone()),
                model: None,
                prompt: "Count: 1, 2, 3, 4, 5, 6, 7,".into(),
                params,
            },
            Some(deadline),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded, "{e}");

    let body = http_get(&agent, "/metrics", Some(&agent.token)).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("rbee_workers{state=\"ready\",") && l.ends_with("} 1")),
        "{body}"
    );
    assert!(
        body.contains("rbee_errors_total{kind=\"cancelled\"} 1"),
        "{body}"
    );
    let body = http_get(&agent, "/metrics", None).await;
    assert!(body.starts_with("HTTP/1.1 401"), "{body}");
}

async fn http_get(agent: &AgentProc, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agent.url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn killed_worker_restarts_with_backoff_then_breaker_trips() {
    let (_d, agent) = agent_with(FAST);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev).await;
    let first_pid = w.pid.unwrap();
    unsafe { libc::kill(first_pid as i32, libc::SIGKILL) };
    let crashed = wait_worker(&mut ev, &w.id, Duration::from_secs(10), |i| {
        i.state == WorkerState::Crashed
    })
    .await;
    assert!(
        crashed
            .last_exit
            .as_deref()
            .unwrap_or("")
            .contains("SIGKILL"),
        "{crashed:?}"
    );
    wait_worker(&mut ev, &w.id, Duration::from_secs(10), |i| {
        i.state == WorkerState::BackingOff
    })
    .await;
    let back = wait_worker(&mut ev, &w.id, Duration::from_secs(60), |i| {
        i.state == WorkerState::Ready
    })
    .await;
    assert_eq!(back.restarts, 1);
    assert_ne!(back.pid, Some(first_pid));

    // Two more failures within the window open the breaker (breaker_failures = 3).
    let mut ready = back;
    let failed = loop {
        unsafe { libc::kill(ready.pid.unwrap() as i32, libc::SIGKILL) };
        let next = wait_worker(&mut ev, &w.id, Duration::from_secs(60), |i| {
            (i.state == WorkerState::Ready && i.pid != ready.pid) || i.state == WorkerState::Failed
        })
        .await;
        if next.state == WorkerState::Failed {
            break next;
        }
        assert!(next.restarts < 3, "breaker should have opened: {next:?}");
        ready = next;
    };
    assert!(failed.detail.contains("circuit breaker open"), "{failed:?}");
    assert!(agent.audit().contains("\"breaker_open\""));
    // The operator restarts it by hand.
    c.request(
        Request::Restart {
            worker: w.id.clone(),
        },
        None,
    )
    .await
    .unwrap();
    wait_worker(&mut ev, &w.id, Duration::from_secs(60), |i| {
        i.state == WorkerState::Ready
    })
    .await;
}

#[tokio::test]
async fn hung_worker_is_detected_killed_and_restarted() {
    let (_d, agent) = agent_with(FAST);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev).await;
    let pid = w.pid.unwrap();
    // A stopped process sends no heartbeats: exactly what a hung worker looks like.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let crashed = wait_worker(&mut ev, &w.id, Duration::from_secs(10), |i| {
        i.state == WorkerState::Crashed
    })
    .await;
    assert!(
        crashed
            .last_exit
            .as_deref()
            .unwrap_or("")
            .starts_with("hung: no heartbeat"),
        "{crashed:?}"
    );
    rbee_testkit::wait_for(Duration::from_secs(5), "hung worker to be gone", || {
        (!alive(pid)).then_some(())
    });
    let back = wait_worker(&mut ev, &w.id, Duration::from_secs(60), |i| {
        i.state == WorkerState::Ready
    })
    .await;
    assert_eq!(back.restarts, 1);
}

#[tokio::test]
async fn desired_workers_survive_an_agent_restart_and_no_worker_outlives_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut agent = AgentProc::start(&state, &[]);
    let (c, mut ev) = agent.subscribed().await;
    let w = spawn_ready(&c, &mut ev).await;
    let pid = w.pid.unwrap();
    // A second agent on the same state dir refuses to start.
    let out = std::process::Command::new(rbee_testkit::bin("rbee-agent"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .arg("--worker-bin")
        .arg(rbee_testkit::bin("rbee-worker"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already uses state dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM: graceful; the worker goes with it.
    let st = agent.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "{st}");
    assert!(!alive(pid), "worker {pid} outlived its agent after SIGTERM");
    assert!(agent.audit().contains("\"agent_stop\""));
    drop(agent);

    // Restart: the desired worker comes back with the same id.
    let mut agent = AgentProc::start(&state, &[]);
    let (c, mut ev) = agent.subscribed().await;
    let back = wait_worker(&mut ev, &w.id, Duration::from_secs(60), |i| {
        i.state == WorkerState::Ready
    })
    .await;
    assert_eq!(back.model, w.model);
    let pid2 = back.pid.unwrap();
    drop(c);

    // SIGKILL: the agent cannot clean up, the kernel still takes the worker down.
    agent.signal_and_wait(libc::SIGKILL);
    rbee_testkit::wait_for(
        Duration::from_secs(5),
        "worker to die with its agent",
        || (!alive(pid2)).then_some(()),
    );
}
