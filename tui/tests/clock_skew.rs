//! Nodes whose clock runs 2 minutes ahead of or behind this machine's: real agents under
//! libfaketime (Debian's `faketime`, preloaded with only the wall clock shifted), driven by the
//! `rbee-tui` subcommands, the gateway (`rbee-tui serve`) and the dashboard's own session code.
//! Every command works (time limits travel as budgets the agent counts on its own clock) and the
//! offset is measured; the dashboard in a real terminal (tmux) shows it and warns.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_proto::config::NodeConfig;
use rbee_testkit::{model_path, AgentProc};
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::node_session::run_node;
use rbee_tui::nodes::config::NodeTarget;
use serde_json::Value;
use tokio::sync::mpsc;

/// libfaketime's multi-threaded library, where Debian's `faketime` package puts it.
fn libfaketime() -> PathBuf {
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"),
        "/usr/lib/faketime/libfaketimeMT.so.1".to_string(),
        "/usr/lib64/faketime/libfaketimeMT.so.1".to_string(),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime not found in {candidates:?}: install it (apt-get install faketime)")
        })
}

/// A real agent (and so its workers) whose wall clock runs `shift_s` seconds off this one;
/// monotonic clocks stay real so the agent's timers behave.
fn skewed_agent(dir: &Path, shift_s: i64) -> AgentProc {
    let lib = libfaketime();
    let shift = format!("{shift_s:+}s");
    AgentProc::start_with_env(
        &dir.join("state"),
        &[],
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME", &shift),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

async fn rbee(config: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbee-tui"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RBEE_CONFIG");
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("rbee-tui hung")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The measured offset is the shift, give or take what a loaded test machine adds.
fn assert_offset(measured_ms: i64, shift_s: i64) {
    let expected = shift_s * 1000;
    assert!(
        (measured_ms - expected).abs() < 5_000,
        "clock offset {measured_ms} ms, expected about {expected} ms"
    );
}

/// The subcommands scripts use, against a URL node with the shifted clock: status reports the
/// offset and warns, a worker is spawned and waited for, an inference streams, the list shows it.
async fn cli_works_against(agent: &AgentProc, dir: &Path, shift_s: i64) {
    let cfg = dir.join("tui.toml");
    let tok = dir.join("token");
    std::fs::write(&tok, format!("{}\n", agent.token)).unwrap();
    let r = |args: Vec<String>| {
        let cfg = cfg.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rbee(&cfg, &args).await
        }
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let add = r(s(&[
        "nodes",
        "add",
        "skewed",
        "--url",
        &agent.url,
        "--token-file",
    ])
    .into_iter()
    .chain([tok.display().to_string()])
    .collect())
    .await;
    assert_eq!(add.code, 0, "nodes add: {}", add.stderr);

    let st = r(s(&["status", "--json"])).await.json();
    let node = &st["nodes"][0];
    assert_eq!(node["state"], "connected", "{st}");
    assert_offset(node["clock_offset_ms"].as_i64().unwrap(), shift_s);
    let warning = node["clock_warning"].as_str().unwrap_or_default();
    let way = if shift_s > 0 { "ahead of" } else { "behind" };
    assert!(warning.contains(way), "{warning}");

    let model = model_path().display().to_string();
    let spawned = r(s(&[
        "workers",
        "spawn",
        "--node",
        "skewed",
        "--model",
        &model,
        "--threads",
        "1",
        "--wait",
        "--json",
    ]))
    .await
    .json();
    assert_eq!(spawned["state"], "ready", "{spawned}");
    let answer = r(s(&[
        "infer",
        "--node",
        "skewed",
        "--model",
        &model,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
        "--json",
    ]))
    .await
    .json();
    assert_eq!(answer["usage"]["generated_tokens"], 3, "{answer}");
    let list = r(s(&["workers", "list", "--json"])).await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    tokio::task::spawn_blocking(move || gateway_serves(&cfg))
        .await
        .unwrap();
}

/// `rbee-tui serve` over the skewed node answers an OpenAI chat completion (the worker the CLI
/// spawned serves it).
fn gateway_serves(cfg: &Path) {
    use std::io::BufRead;
    let mut gw = std::process::Command::new(env!("CARGO_BIN_EXE_rbee-tui"))
        .arg("--config")
        .arg(cfg)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(gw.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let body = serde_json::json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 3,
    });
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(body.to_string())
        .arg(format!("{base}/v1/chat/completions"))
        .output()
        .unwrap();
    let _ = gw.kill();
    let _ = gw.wait();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
}

/// The dashboard's session to the node: it connects, stays connected, and measures the offset.
async fn dashboard_session_measures(agent: &AgentProc, dir: &Path, shift_s: i64) {
    let token_file = dir.join("session-token");
    std::fs::write(&token_file, format!("{}\n", agent.token)).unwrap();
    let target = NodeTarget::Remote(NodeConfig {
        name: "skewed".into(),
        url: agent.url.clone(),
        token_file,
        ..Default::default()
    });
    let (atx, mut arx) = mpsc::channel(4096);
    let (etx, erx) = mpsc::channel(16);
    let task = tokio::spawn(run_node(0, target, atx, erx));
    let mut offsets = Vec::new();
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    // Three pings in a row, with no drop between them (the session pings every 2 s).
    while offsets.len() < 3 {
        let a = tokio::time::timeout_at(limit, arx.recv())
            .await
            .unwrap_or_else(|_| panic!("no three pings within 30 s; offsets so far {offsets:?}"))
            .expect("session ended");
        match a {
            Action::Latency {
                clock_offset_ms, ..
            } => offsets.push(clock_offset_ms),
            Action::Disconnected { reason, .. } => panic!("session dropped: {reason}"),
            _ => {}
        }
    }
    for o in offsets {
        assert_offset(o, shift_s);
    }
    drop(etx);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_two_minutes_ahead_works_from_the_cli_the_gateway_and_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let agent = skewed_agent(dir.path(), 120);
    cli_works_against(&agent, dir.path(), 120).await;
    dashboard_session_measures(&agent, dir.path(), 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_two_minutes_behind_works_from_the_cli_the_gateway_and_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let agent = skewed_agent(dir.path(), -120);
    cli_works_against(&agent, dir.path(), -120).await;
    dashboard_session_measures(&agent, dir.path(), -120).await;
}

/// The dashboard, in a real terminal, over a node whose clock runs 2 minutes ahead: the node's
/// summary says by how much and warns, once a ping has measured it.
#[test]
fn the_dashboard_in_a_terminal_warns_of_a_node_two_minutes_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let agent = skewed_agent(dir.path(), 120);
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", agent.token)).unwrap();
    let cfg = dir.path().join("tui.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[nodes]]\nname = \"skewed\"\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            agent.url,
            token.display()
        ),
    )
    .unwrap();
    let tmux = common::tmux::Tmux::new("clock", "rbee");
    let mut new = tmux.cmd(&["new-session", "-d", "-s", "rbee", "-x", "120", "-y", "30"]);
    new.arg(env!("CARGO_BIN_EXE_rbee-tui"))
        .arg("--config")
        .arg(&cfg)
        .arg("--log-file")
        .arg(dir.path().join("tui.log"));
    common::run::run_bounded(new, Duration::from_secs(10)).ok();
    let screen = tmux.wait_screen(Duration::from_secs(60), "the clock warning", |s| {
        s.contains("clock +1") && s.contains("ahead of this machine")
    });
    let said = screen
        .split("clock +")
        .nth(1)
        .and_then(|r| r.split(" s").next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no offset on screen:\n{screen}"));
    assert!((115.0..125.0).contains(&said), "offset {said} s:\n{screen}");
    tmux.keys(&["q"]);
}
