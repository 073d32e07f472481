//! `rbee-tui workers unload-all` against the real agent with two real workers on the real model:
//! both killed, the node's worker list and its desired state empty afterwards.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::run::{add_node_args, run_bounded, test_model_name, Run};
use rbee_testkit::{bin, model_dir, AgentProc};

fn tui(cfg: &Path, local_state: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee-tui"));
    for var in [
        "RUST_LOG",
        "RBEE_CONFIG",
        "RBEE_LOG_FILE",
        "RBEE_LOCAL_STATE",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(cfg).args(args);
    cmd.env("RBEE_LOCAL_STATE", local_state)
        .env("RBEE_AGENT_BIN", bin("rbee-agent"))
        .env("RBEE_MODEL_DIR", model_dir());
    run_bounded(cmd, Duration::from_secs(300))
}

/// The worker ids in the agent's `desired.json`.
fn desired_ids(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("desired.json")).unwrap_or_default();
    if text.is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn unload_all_kills_every_worker_and_empties_the_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let cfg = dir.path().join("conf/tui.toml");
    let local = dir.path().join("local-state");
    let tui = |args: &[&str]| tui(&cfg, &local, args);
    let token_file = state.join("token");
    tui(&add_node_args(&agent.url, &token_file)).ok();
    let name = test_model_name(&tui(&["models", "list", "--json"]).json());
    let spawn = [
        "--timeout",
        "120",
        "workers",
        "spawn",
        "--model",
        &name,
        "--wait",
        "--json",
    ];
    let a = tui(&spawn).json()["id"].as_str().unwrap().to_string();
    let b = tui(&spawn).json()["id"].as_str().unwrap().to_string();
    let mut before = desired_ids(&state);
    before.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(before, want, "both workers are desired before");

    declined_on_a_terminal(&cfg, &a, &b);
    assert_eq!(desired_ids(&state).len(), 2, "nothing unloaded after no");

    let r = tui(&["workers", "unload-all", "--yes", "--json"]).json();
    let mut killed: Vec<String> = r[0]["killed"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    killed.sort();
    assert_eq!(r[0]["node"], "n1", "{r}");
    assert_eq!(killed, want, "{r}");

    let left = tui(&["workers", "list", "--json"]).json();
    assert_eq!(left, serde_json::json!([]), "no worker left: {left}");
    assert!(desired_ids(&state).is_empty(), "desired state empty");

    // Nothing left: said so, exit 0.
    let again = tui(&["workers", "unload-all", "--yes"]).ok().stdout.clone();
    assert_eq!(again, "no workers\n");
    drop(agent);
}

/// On a terminal (a tmux pane) it asks first, naming the count and node; `n` leaves both workers.
fn declined_on_a_terminal(cfg: &Path, a: &str, b: &str) {
    let socket = format!("rbee-unload-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&socket).args(args);
        run_bounded(c, Duration::from_secs(10))
    };
    let conf = cfg.with_file_name("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    let (tui_bin, cfg_s) = (env!("CARGO_BIN_EXE_rbee-tui"), cfg.to_str().unwrap());
    let conf_s = conf.to_str().unwrap();
    tmux(&[
        "-f",
        conf_s,
        "new-session",
        "-d",
        "-s",
        "u",
        "-x",
        "100",
        "-y",
        "10",
    ]);
    tmux(&[
        "send-keys",
        "-t",
        "u",
        "-l",
        &format!("{tui_bin} --config {cfg_s} workers unload-all"),
    ]);
    tmux(&["send-keys", "-t", "u", "Enter"]);
    let screen = |want: &str| {
        let start = std::time::Instant::now();
        loop {
            let s = tmux(&["capture-pane", "-p", "-t", "u"]).stdout;
            if s.contains(want) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no `{want}`:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    screen("unload 2 worker(s) on n1? [y/N]");
    tmux(&["send-keys", "-t", "u", "n", "Enter"]);
    screen("not confirmed, nothing done");
    tmux(&["kill-server"]);
    let listed = tui(
        cfg,
        &cfg.with_file_name("local"),
        &["workers", "list", "--json"],
    )
    .json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert!(ids.contains(&a) && ids.contains(&b), "{listed}");
}
