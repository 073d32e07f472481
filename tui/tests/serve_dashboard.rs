//! `rbee-tui --serve ADDR` in a real terminal (a tmux pane): the dashboard runs the gateway beside
//! itself over a real agent and a real worker on the real model; one completion sent with curl
//! shows up on the Requests screen (`R`) with its node/worker and outcome.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::run::{add_node_args, run_bounded, Run};
use common::tmux::Tmux;
use rbee_testkit::{bin, model_dir, model_path, AgentProc};

const TUI: &str = env!("CARGO_BIN_EXE_rbee-tui");
const SESSION: &str = "rbee";

fn tui(cfg: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(TUI);
    for var in [
        "RUST_LOG",
        "RBEE_CONFIG",
        "RBEE_LOG_FILE",
        "RBEE_API_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(cfg).args(args);
    cmd.env("RBEE_AGENT_BIN", bin("rbee-agent"))
        .env("RBEE_MODEL_DIR", model_dir());
    run_bounded(cmd, Duration::from_secs(300))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_beside_the_dashboard_shows_a_curl_request_on_the_requests_screen() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is needed for this test");
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let cfg = dir.path().join("conf/tui.toml");
    let token_file = state.join("token");
    tui(&cfg, &add_node_args(&agent.url, &token_file)).ok();
    let model = model_path().to_string_lossy().into_owned();
    let spawn = [
        "--timeout",
        "120",
        "workers",
        "spawn",
        "--model",
        &model,
        "--wait",
        "--json",
    ];
    let worker = tui(&cfg, &spawn).json()["id"].as_str().unwrap().to_string();

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let tmux = Tmux::new("serve", SESSION);
    let log = dir.path().join("tui.log");
    let mut new = tmux.cmd(&["new-session", "-d", "-s", SESSION, "-x", "120", "-y", "30"]);
    new.arg("-e")
        .arg(format!("RBEE_AGENT_BIN={}", bin("rbee-agent").display()));
    new.arg(TUI)
        .arg("--config")
        .arg(&cfg)
        .arg("--log-file")
        .arg(&log)
        .arg("--serve")
        .arg(&addr);
    run_bounded(new, Duration::from_secs(10)).ok();
    tmux.wait_screen(Duration::from_secs(60), "node n1 connected", |s| {
        s.contains("n1") && s.contains("1/1 up")
    });

    // One completion through the gateway the dashboard runs.
    let body = serde_json::json!({
        "model": model_path().file_stem().unwrap().to_string_lossy(),
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    });
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "--max-time",
        "240",
        "-H",
        "content-type: application/json",
    ])
    .arg("-d")
    .arg(body.to_string())
    .arg(format!("http://{addr}/v1/completions"));
    let r = run_bounded(curl, Duration::from_secs(250));
    let answer: serde_json::Value = r.json();
    assert_eq!(answer["object"], "text_completion", "{answer}");

    tmux.keys(&["R"]);
    let want = format!("n1/{worker}");
    let screen = tmux.wait_screen(Duration::from_secs(10), "the request's row", |s| {
        s.contains("Requests") && s.lines().any(|l| l.contains(&want) && l.contains("ok"))
    });
    assert!(
        screen.contains("127.0.0.1:"),
        "the client is shown:\n{screen}"
    );

    // q leaves the dashboard and the gateway with it: the port is free again.
    tmux.keys(&["q"]);
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the gateway still listens after q"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}
