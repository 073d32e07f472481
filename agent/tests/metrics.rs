//! The agent's metrics: the real binary and a real worker on the real small model; the
//! exposition checked by Prometheus' own `promtool`, and values that move with what happens.
use std::time::Duration;

use rbee_client::{Client, Incoming};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec};
use rbee_proto::SamplingParams;
use rbee_testkit::{model_path, AgentProc};
use tokio::sync::mpsc;

/// The value of the first sample whose line starts with `prefix` (name and labels so far).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(c: &Client) -> String {
    match c.request(Request::Metrics, None).await.unwrap() {
        Reply::Metrics { text } => text,
        other => panic!("expected metrics, got {other:?}"),
    }
}

/// `promtool check metrics` on `text`; None (with the reason printed) when promtool is missing.
fn promtool(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIP promtool check: promtool not runnable ({e}); apt-get install prometheus"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

async fn wait_ready(ev: &mut mpsc::Receiver<Incoming>, id: &str) {
    let fut = async {
        loop {
            match ev.recv().await {
                Some(Incoming::Event(Event::WorkerReady { worker, .. })) if worker == id => return,
                None | Some(Incoming::Closed(_)) => panic!("session closed"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("worker ready within 60 s");
}

/// Spawn a worker on the real model, wait for it, run one short greedy inference.
async fn spawn_and_infer(
    c: &Client,
    ev: &mut mpsc::Receiver<Incoming>,
) -> (String, rbee_proto::session::WorkerInfo, rbee_proto::Usage) {
    let model = model_path().display().to_string();
    let Reply::Spawned { worker } = c
        .request(
            Request::Spawn(SpawnSpec {
                model: model.clone(),
                device: "cpu".into(),
                threads: Some(1),
                ..Default::default()
            }),
            None,
        )
        .await
        .unwrap()
    else {
        panic!("spawn refused")
    };
    wait_ready(ev, &worker.id).await;
    let reply = c
        .request(
            Request::Infer {
                worker: Some(worker.id.clone()),
                model: None,
                prompt: "The capital of France is".into(),
                params: SamplingParams {
                    temperature: 0.0,
                    max_tokens: 8,
                    ..Default::default()
                },
            },
            None,
        )
        .await
        .unwrap();
    let Reply::InferDone { usage, .. } = reply else {
        panic!("expected InferDone, got {reply:?}")
    };
    assert!(usage.generated_tokens > 0);
    (model, worker, usage)
}

#[tokio::test]
async fn exposition_passes_promtool_and_moves_with_an_inference() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    let (c, mut ev) = agent.subscribed().await;

    let before = scrape(&c).await;
    for family in [
        "rbee_agent_build_info{version=",
        "rbee_agent_uptime_seconds ",
        "rbee_node_memory_total_bytes ",
        "rbee_node_model_store_free_bytes ",
        "rbee_node_cpu_usage_cores ",
        "rbee_sessions_active ",
    ] {
        assert!(
            value(&before, family).is_some(),
            "{family} missing:\n{before}"
        );
    }
    assert!(value(&before, "rbee_node_memory_total_bytes ").unwrap() > 0.0);
    assert!(value(&before, "rbee_sessions_active ").unwrap() >= 1.0);
    assert!(
        !before.contains("rbee_requests_total{"),
        "no request yet:\n{before}"
    );

    let (model, worker, usage) = spawn_and_infer(&c, &mut ev).await;

    let after = scrape(&c).await;
    let m = format!("{{model=\"{}\"", model.replace('\\', "\\\\"));
    let ready = format!("rbee_workers{{state=\"ready\",model=\"{model}\",device=\"cpu\"}} ");
    assert_eq!(value(&after, &ready), Some(1.0), "{after}");
    assert_eq!(
        value(&after, &format!("rbee_spawn_to_ready_seconds_count{m}")),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(&after, &format!("rbee_inference_duration_seconds_count{m}")),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            &format!("rbee_time_to_first_token_seconds_count{m}")
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(&after, &format!("rbee_generated_tokens_total{m}")),
        Some(f64::from(usage.generated_tokens)),
        "{after}"
    );
    let outcomes: f64 = after
        .lines()
        .filter(|l| l.starts_with(&format!("rbee_requests_total{m},outcome=")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(outcomes, 1.0, "{after}");
    let queue = format!("rbee_worker_queue_depth{{worker=\"{}\",", worker.id);
    assert_eq!(value(&after, &queue), Some(0.0), "{after}");
    assert!(
        value(&after, "rbee_agent_uptime_seconds ").unwrap()
            >= value(&before, "rbee_agent_uptime_seconds ").unwrap()
    );

    // GET /metrics serves the same families, token-protected.
    let http = rbee_testkit_http(&agent, Some(&agent.token)).await;
    assert!(http.starts_with("HTTP/1.1 200"), "{http}");
    assert!(http.contains("rbee_generated_tokens_total{"), "{http}");
    let denied = rbee_testkit_http(&agent, None).await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");

    if let Some((ok, said)) = promtool(&after) {
        assert!(
            ok,
            "promtool check metrics refused the agent's exposition:\n{said}\n{after}"
        );
    }
    let body = http.split("\r\n\r\n").nth(1).unwrap();
    if let Some((ok, said)) = promtool(body) {
        assert!(ok, "promtool refused GET /metrics:\n{said}");
    }
}

async fn rbee_testkit_http(agent: &AgentProc, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agent.url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
