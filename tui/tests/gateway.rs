//! `rbee-tui serve` end to end: real agents on the real model, the real gateway binary, and
//! clients nobody here wrote — the official `openai` Python package (`tests/gateway/*.py`) and
//! curl (SSE as bytes).
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rbee_proto::session::{
    ModelEntry, NodeStatus, Reply, Request, SpawnSpec, Telemetry, WorkerInfo,
};
use rbee_proto::{ErrorCode, WorkerState};
use rbee_testkit::standin::{Answer, Behaviour, Ctx, StandIn, MODEL_REF};
use rbee_testkit::{bin, model_path, wait_for, AgentProc};
use serde_json::{json, Value};

const SECRET: &str = "sk-gateway-test-0123456789";
const BOUND: Duration = Duration::from_secs(120);

fn model() -> String {
    model_path()
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A running `rbee-tui serve` over the given agents.
struct Gateway {
    child: Child,
    base: String,
    audit: PathBuf,
}

impl Gateway {
    fn start(dir: &Path, agents: &[(&str, &AgentProc)], extra: &[&str]) -> Gateway {
        let nodes: Vec<(&str, String, String)> = agents
            .iter()
            .map(|(n, a)| (*n, a.url.clone(), a.token.clone()))
            .collect();
        Self::over(dir, &nodes, extra)
    }

    /// Over any agents: (name, `ws://` URL, token).
    fn over(dir: &Path, nodes: &[(&str, String, String)], extra: &[&str]) -> Gateway {
        let mut toml = String::new();
        for (name, url, secret) in nodes {
            let token = dir.join(format!("{name}.token"));
            std::fs::write(&token, secret).unwrap();
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nurl = \"{url}\"\ntoken_file = \"{}\"\n\n",
                token.display()
            ));
        }
        let config = dir.join("tui.toml");
        std::fs::write(&config, toml).unwrap();
        let keys = dir.join("keys");
        std::fs::write(&keys, format!("# test\ntester {SECRET}\n")).unwrap();
        let audit = dir.join("gateway-audit.jsonl");
        let mut child = Command::new(bin("rbee-tui"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", "127.0.0.1:0", "--api-key-file"])
            .arg(&keys)
            .arg("--audit-log")
            .arg(&audit)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("gateway.log")).unwrap(),
            ))
            .spawn()
            .expect("start rbee-tui serve");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("gateway announces its address");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Gateway { child, base, audit }
    }

    /// `curl` with the key (unless `auth` is false): status, headers, body.
    fn curl(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> Http {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "-N", "-X", method]);
        cmd.arg(format!("{}{path}", self.base));
        if auth {
            cmd.args(["-H", &format!("Authorization: Bearer {SECRET}")]);
        }
        if body.is_some() {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("run curl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl failed: {out:?}");
        Http::parse(&String::from_utf8_lossy(&out.stdout))
    }

    fn post(&self, path: &str, body: &Value) -> Http {
        self.curl("POST", path, Some(&body.to_string()), true)
    }

    fn metric(&self, name: &str) -> u64 {
        let m = self.curl("GET", "/metrics", None, true).body;
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("rbee_gateway_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {m}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer as curl saw it.
struct Http {
    status: u16,
    headers: String,
    body: String,
}

impl Http {
    fn parse(raw: &str) -> Http {
        let (head, body) = raw.split_once("\r\n\r\n").expect("headers and body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        Http {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Workers on an agent now, as it reports them.
fn workers(agent: &AgentProc) -> Vec<WorkerInfo> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, _events) = agent.connect().await;
        match client.request(Request::ListWorkers, None).await.unwrap() {
            Reply::Workers { workers } => workers,
            other => panic!("unexpected {other:?}"),
        }
    })
}

fn agent(dir: &Path, name: &str) -> AgentProc {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    AgentProc::start(&state, &[])
}

fn chat(max_tokens: u32, extra: Value) -> Value {
    let mut b = json!({
        "model": model(),
        "messages": [{"role": "user", "content": "Tell me about bees."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn official_openai_client_against_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (agent(dir.path(), "a"), agent(dir.path(), "b"));
    let gw = Gateway::start(dir.path(), &[("a", &a), ("b", &b)], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("{}/v1", gw.base))
        .arg(SECRET)
        .arg(model())
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the official client is missing: pip install openai"
    );
    assert!(
        out.status.success(),
        "openai client checks failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        report["chat"].as_str().unwrap().contains("Paris"),
        "{report}"
    );
    assert_eq!(report["e401"]["type"], "authentication_error");

    // The model was loaded on demand, once, on one of the two nodes.
    let loaded = workers(&a).len() + workers(&b).len();
    assert_eq!(loaded, 1, "one worker spawned on demand");
    // Every request is audited with the key's id, never the key.
    let audit = std::fs::read_to_string(&gw.audit).unwrap();
    assert!(!audit.contains(SECRET));
    let lines = gw.audit();
    let outcome = |o: &str| {
        lines
            .iter()
            .filter(|l| l["outcome"] == o)
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome("ok").len(), 5, "{audit}");
    assert_eq!(outcome("model_not_found").len(), 1, "{audit}");
    assert_eq!(outcome("unsupported_parameter").len(), 2, "{audit}");
    let bad_key = outcome("invalid_api_key");
    assert_eq!(bad_key.len(), 1, "{audit}");
    assert!(bad_key[0]["key"].is_null());
    assert!(
        lines
            .iter()
            .filter(|l| l["outcome"] != "invalid_api_key")
            .all(|l| l["key"] == "tester"),
        "{audit}"
    );
}

#[test]
fn sse_bytes_errors_and_refusals_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), "a");
    let gw = Gateway::start(dir.path(), &[("a", &a)], &[]);

    let r = gw.post(
        "/v1/chat/completions",
        &chat(
            6,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("content-type: text/event-stream"),
        "{}",
        r.headers
    );
    assert!(r.body.starts_with("data: {"), "{}", r.body);
    assert!(r.body.ends_with("\n\ndata: [DONE]\n\n"), "{:?}", r.body);
    let events: Vec<&str> = r.body.trim_end().split("\n\n").collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")));
    let usage: Value = serde_json::from_str(&events[events.len() - 2][6..]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"].as_u64().unwrap()
            + usage["usage"]["prompt_tokens"].as_u64().unwrap(),
        usage["usage"]["total_tokens"].as_u64().unwrap()
    );

    // Errors in OpenAI's shape.
    let r = gw.curl("POST", "/v1/chat/completions", Some("{\"model\": "), true);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_json"))
    );
    let r = gw.post(
        "/v1/chat/completions",
        &json!({"model": model(), "messages": "hi"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");
    let r = gw.post(
        "/v1/completions",
        &json!({"model": model(), "prompt": "x", "temperature": 9}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("temperature"))
    );
    let r = gw.curl("GET", "/v1/models", None, false);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = gw.post("/v1/completions", &json!({"model": "nope", "prompt": "x"}));
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, json!("model_not_found"))
    );
    let r = gw.curl("GET", "/health", None, false);
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    assert_eq!(
        gw.metric("requests_total"),
        2,
        "the stream and the unknown model reached the scheduler"
    );

    // A prompt longer than the model's context: 400, not a retry elsewhere.
    let long_prompt = "bees ".repeat(40_000);
    let r = gw.post(
        "/v1/completions",
        &json!({"model": model(), "prompt": long_prompt, "max_tokens": 4}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(gw.metric("retries_total"), 0);

    // SIGTERM: the worker the gateway loaded on demand leaves with it.
    assert_eq!(workers(&a).len(), 1);
    let mut gw = gw;
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGTERM) };
    assert!(gw.child.wait().unwrap().success());
    assert!(
        workers(&a).is_empty(),
        "on-demand worker unloaded at shutdown"
    );

    // Off loopback without keys: refused at start.
    let out = Command::new(bin("rbee-tui"))
        .args([
            "--config",
            "/nonexistent/tui.toml",
            "serve",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key-file"), "{err}");
}

/// Start a streaming request in the background; its whole output comes back on the channel.
fn background(gw: &Gateway, body: Value) -> mpsc::Receiver<Http> {
    let (tx, rx) = mpsc::channel();
    let (base, body) = (gw.base.clone(), body.to_string());
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-i",
                "-N",
                "-X",
                "POST",
                &format!("{base}/v1/chat/completions"),
            ])
            .args(["-H", &format!("Authorization: Bearer {SECRET}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ])
            .output()
            .unwrap();
        let _ = tx.send(Http::parse(&String::from_utf8_lossy(&out.stdout)));
    });
    rx
}

#[test]
fn spreads_over_two_nodes_and_unloads_after_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (agent(dir.path(), "a"), agent(dir.path(), "b"));
    // One request per worker: the second concurrent request makes the gateway load the model
    // on the other node too.
    let gw = Gateway::start(
        dir.path(),
        &[("a", &a), ("b", &b)],
        &["--worker-slots", "1"],
    );
    // The first streams for as long as the test needs (its client leaves at the end).
    let body = chat(
        4000,
        json!({"stream": true, "ignore_eos": true, "keep_alive": 0}),
    );
    let (mut first, mut lines) = stream(&gw, &body);
    assert!(lines.next().unwrap().unwrap().starts_with("data: {"));
    let second = background(&gw, chat(8, json!({"stream": true, "keep_alive": 0})));
    let r = second.recv_timeout(BOUND).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.ends_with("data: [DONE]\n\n"), "{}", r.body);
    first.kill().unwrap();
    first.wait().unwrap();
    drop(lines);
    wait_for(BOUND, "the first request to be cancelled", || {
        (gw.metric("cancelled_total") == 1).then_some(())
    });
    let audit = gw.audit();
    let mut nodes: Vec<&str> = audit.iter().map(|l| l["node"].as_str().unwrap()).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"], "one request per node: {audit:?}");
    assert_eq!(gw.metric("spawns_total"), 2);
    // keep_alive 0: both workers are unloaded once idle.
    wait_for(BOUND, "both workers to be unloaded", || {
        (workers(&a).is_empty() && workers(&b).is_empty()).then_some(())
    });
    assert_eq!(gw.metric("unloads_total"), 2);
}

#[test]
fn client_disconnect_cancels_the_generation_on_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), "a");
    let gw = Gateway::start(dir.path(), &[("a", &a)], &[]);
    // Thousands of tokens: minutes of work unless the cancel reaches the worker.
    let body = chat(4000, json!({"stream": true, "ignore_eos": true}));
    let (mut curl, mut lines) = stream(&gw, &body);
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    let busy = workers(&a);
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].in_flight, 1, "generating");
    curl.kill().unwrap();
    curl.wait().unwrap();
    drop(lines);
    wait_for(BOUND, "the worker to stop generating", || {
        let w = workers(&a);
        (w.len() == 1 && w[0].in_flight == 0).then_some(())
    });
    wait_for(BOUND, "the gateway to count the cancel", || {
        (gw.metric("cancelled_total") == 1).then_some(())
    });
    let audit = gw.audit();
    assert_eq!(audit.last().unwrap()["outcome"], "cancelled", "{audit:?}");
}

/// A streaming chat started with curl; its SSE lines as they come.
fn stream(
    gw: &Gateway,
    body: &Value,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut curl = Command::new("curl")
        .args(["-sS", "-N", "-X", "POST"])
        .arg(format!("{}/v1/chat/completions", gw.base))
        .args(["-H", &format!("Authorization: Bearer {SECRET}")])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    (curl, lines)
}

#[test]
fn one_batched_worker_streams_four_conversations_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), "a");
    // No --worker-slots: the gateway gives the worker as many requests as it has slots.
    let gw = Gateway::start(dir.path(), &[("a", &a)], &[]);
    let body = chat(4000, json!({"stream": true, "ignore_eos": true}));
    let mut streams: Vec<_> = (0..4).map(|_| stream(&gw, &body)).collect();
    // Each of the four gets text while the other three are still generating thousands of
    // tokens: they run side by side on one worker, not one after another.
    for (i, (_, lines)) in streams.iter_mut().enumerate() {
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("data: {"), "stream {i}: {first}");
    }
    let w = workers(&a);
    assert_eq!(w.len(), 1, "one worker serves all four: {w:?}");
    assert_eq!(w[0].summary.as_ref().map(|s| s.parallel), Some(4), "{w:?}");
    wait_for(BOUND, "the worker to report four slots in use", || {
        (workers(&a)[0].in_flight == 4).then_some(())
    });
    assert_eq!(gw.metric("spawns_total"), 1);
    for (mut curl, lines) in streams {
        curl.kill().unwrap();
        curl.wait().unwrap();
        drop(lines);
    }
    wait_for(BOUND, "every slot to be freed", || {
        (workers(&a)[0].in_flight == 0).then_some(())
    });
}

#[test]
fn full_queue_answers_429_then_the_wait_ends_in_503() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), "a");
    // A worker loaded before the gateway starts: the timeouts below measure only the waits.
    spawn_ready(&a);
    let gw = Gateway::start(
        dir.path(),
        &[("a", &a)],
        &[
            "--worker-slots",
            "1",
            "--queue",
            "1",
            "--queue-timeout",
            "3",
            "--request-timeout",
            "10",
        ],
    );
    // Far longer than the request timeout at any speed this worker has.
    let long = || chat(4000, json!({"stream": true, "ignore_eos": true}));
    let running = background(&gw, long());
    wait_for(BOUND, "one request running", || {
        (gw.metric("running") == 1).then_some(())
    });
    let waiting = background(&gw, long());
    wait_for(BOUND, "one request waiting", || {
        (gw.metric("waiting") == 1).then_some(())
    });
    let r = gw.post("/v1/chat/completions", &chat(2, json!({})));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.contains("retry-after: "), "{}", r.headers);
    assert_eq!(r.json()["error"]["code"], "queue_full");
    // The waiting one: 503 once its queue timeout passed, the worker still busy.
    let r = waiting.recv_timeout(BOUND).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.contains("retry-after: "), "{}", r.headers);
    assert_eq!(r.json()["error"]["code"], "queue_timeout");
    // The running one reached its request timeout: an error event ends its stream and the
    // worker stops generating.
    let r = running.recv_timeout(BOUND).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("\"code\":\"timeout\""), "{}", r.body);
    wait_for(BOUND, "the worker to stop generating", || {
        workers(&a).iter().all(|w| w.in_flight == 0).then_some(())
    });
}

/// Spawn a worker of the test model on `agent` directly and wait until it serves.
fn spawn_ready(agent: &AgentProc) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, _events) = agent.connect().await;
        let spec = SpawnSpec {
            model: model_path().display().to_string(),
            device: "cpu".into(),
            threads: None,
            ..Default::default()
        };
        let reply = client.request(Request::Spawn(spec), None).await.unwrap();
        assert!(matches!(reply, Reply::Spawned { .. }), "{reply:?}");
    });
    wait_for(BOUND, "the worker to be ready", || {
        workers(agent)
            .iter()
            .any(|w| w.state.is_serving())
            .then_some(())
    });
}

#[test]
fn a_node_killed_mid_load_cuts_its_streams_and_the_other_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = (agent(dir.path(), "a"), agent(dir.path(), "b"));
    // A worker on each node, loaded before the gateway starts.
    spawn_ready(&a);
    spawn_ready(&b);
    let gw = Gateway::start(
        dir.path(),
        &[("a", &a), ("b", &b)],
        &["--worker-slots", "1"],
    );
    // Mid-load: one long answer streaming on each node (its first token seen), then a dies.
    let body = chat(120, json!({"stream": true, "ignore_eos": true}));
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let (curl, mut lines) = stream(&gw, &body);
            let first = lines.next().unwrap().unwrap();
            assert!(first.starts_with("data: {"), "{first}");
            (curl, lines)
        })
        .collect();
    a.signal_and_wait(libc::SIGKILL);
    // The stream on a ends with an error event (no hang, no [DONE]); b's completes.
    let mut ends: Vec<bool> = streams
        .into_iter()
        .map(|(mut curl, lines)| {
            let rest: Vec<String> = lines.map_while(Result::ok).collect();
            curl.wait().unwrap();
            let last = rest
                .iter()
                .rev()
                .find(|l| !l.is_empty())
                .cloned()
                .unwrap_or_default();
            assert!(
                last == "data: [DONE]" || last.contains("{\"error\":"),
                "{last}"
            );
            last == "data: [DONE]"
        })
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        [false, true],
        "one stream cut by the dead node, one complete"
    );
    // Whatever the gateway knows of a's death yet, every request is answered by b.
    let answers: Vec<_> = (0..4)
        .map(|_| background(&gw, chat(4, json!({"stream": true}))))
        .collect();
    for rx in answers {
        let r = rx.recv_timeout(BOUND).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.ends_with("data: [DONE]\n\n"), "{}", r.body);
    }
    let audit = gw.audit();
    assert!(
        audit.iter().rev().take(4).all(|l| l["node"] == "b"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l["node"] == "a" && l["outcome"] != "ok"),
        "{audit:?}"
    );
}

/// A node whose one worker always dies before its first token (the agent's `worker_gone`).
#[derive(Default)]
struct DyingWorker {
    attempts: std::sync::atomic::AtomicU32,
}

impl Behaviour for DyingWorker {
    fn node(&self) -> String {
        "dying".into()
    }

    fn agent_version(&self) -> String {
        "0.0.0-test".into()
    }

    fn answer(&self, _ctx: &Ctx, request: Request) -> Answer {
        let worker = standin_worker();
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
                workers: vec![worker.clone()],
            }),
            Request::Status => Answer::Reply(Reply::Status {
                status: NodeStatus {
                    node: self.node(),
                    agent_version: self.agent_version(),
                    telemetry: Telemetry::default(),
                    workers: vec![worker],
                },
            }),
            Request::Infer { .. } | Request::Chat { .. } => {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                Answer::Error(
                    ErrorCode::WorkerGone,
                    "worker w1 exited: killed by signal 9".into(),
                )
            }
            other => Answer::Error(ErrorCode::BadRequest, format!("not here: {other:?}")),
        }
    }
}

fn standin_worker() -> WorkerInfo {
    WorkerInfo {
        id: "w1".into(),
        model: MODEL_REF.into(),
        device: "cpu".into(),
        state: WorkerState::Ready,
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

#[test]
fn a_worker_gone_before_its_first_token_is_retried_once_elsewhere() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = "standin-token";
    let dying = Arc::new(DyingWorker::default());
    let (a, b, c) = rt.block_on(async {
        (
            StandIn::serve(token, dying.clone()).await.unwrap(),
            StandIn::start(token).await,
            StandIn::serve(token, Arc::new(DyingWorker::default()))
                .await
                .unwrap(),
        )
    });
    // a: its worker dies on every request; b: an echo node with no worker yet.
    let gw = Gateway::over(
        dir.path(),
        &[("a", a.url(), token.into()), ("b", b.url(), token.into())],
        &[],
    );
    let r = gw.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello bees"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], "echo: hello bees");
    assert_eq!(dying.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(gw.metric("retries_total"), 1);
    assert_eq!(b.workers().len(), 1, "b loaded the model for the retry");
    assert_eq!(gw.audit().last().unwrap()["node"], "b");
    drop(gw);

    // Two nodes whose workers both die: one retry, then the client gets the error.
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::over(
        dir.path(),
        &[("a", a.url(), token.into()), ("c", c.url(), token.into())],
        &[],
    );
    let r = gw.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello"}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "worker_gone");
    assert!(r.headers.contains("retry-after: "));
    assert_eq!(dying.attempts.load(Ordering::SeqCst), 2);
    assert_eq!(c.behaviour().attempts.load(Ordering::SeqCst), 1);
    assert_eq!(gw.metric("retries_total"), 1);
}

#[test]
fn serve_watch_shows_the_requests_live_and_q_stops_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = "standin-token";
    let node = rt.block_on(StandIn::start(token));
    let tokfile = dir.path().join("n.token");
    std::fs::write(&tokfile, token).unwrap();
    let config = dir.path().join("tui.toml");
    std::fs::write(
        &config,
        format!(
            "[[nodes]]\nname = \"n\"\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            node.url(),
            tokfile.display()
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let session = format!("rbee-gw-watch-{}", std::process::id());
    let cmd = format!(
        "{} --config {} serve --listen 127.0.0.1:{port} --watch",
        bin("rbee-tui").display(),
        config.display()
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (the terminal tests need it)")
    };
    // The session goes away with the test, whatever happens.
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _kill = Kill(session.clone());
    assert!(tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "110",
        "-y",
        "12",
        &cmd
    ])
    .status
    .success());
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    wait_for(BOUND, "the Requests view", || {
        pane().contains("Requests").then_some(())
    });
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{port}/v1/completions")])
        .args(["-d", r#"{"model": "tiny", "prompt": "hello bees"}"#])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo: hello bees"));
    let shown = wait_for(BOUND, "the answered request on screen", || {
        let p = pane();
        p.lines()
            .find(|l| l.contains("tiny") && l.contains(" ok "))
            .map(|l| l.to_string())
    });
    assert!(shown.contains("n/w1"), "{shown}");
    assert_eq!(node.workers().len(), 1);
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for(BOUND, "the gateway to stop", || {
        (!tmux(&["has-session", "-t", &session]).status.success()).then_some(())
    });
    assert!(
        node.workers().is_empty(),
        "the worker loaded on demand leaves with the gateway"
    );
}
