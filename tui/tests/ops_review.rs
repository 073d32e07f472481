//! An operator's review of the issue-15 commands against a real agent: a worker log with bytes
//! that are not UTF-8 is printed (replacement characters, no control character), `--lines 0`
//! prints nothing and succeeds, an unknown worker is named, a `--follow` whose worker is killed
//! ends saying so with success, a killed worker's log is still read (from disk), a follower of
//! a stopped agent ends at once, `--timeout 0` is refused, a load timeout is reported once.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::run::add_node_args;
use rbee_testkit::{model_path, wait_for, AgentProc};

/// A worker stand-in that writes a line of invalid UTF-8 and a marker, then idles.
fn stand_in(dir: &Path) -> PathBuf {
    rbee_testkit::script(
        dir,
        "odd-bytes-worker",
        "printf 'bad \\377\\376 bytes\\n' >&2\necho ready-marker >&2\nexec sleep 100000",
    )
}

fn rbee(cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee-tui"));
    cmd.arg("--config")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .env_remove("RBEE_CONFIG")
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// A config in `dir` with `agent` added as node `n1` (URL and token file); its path.
fn add_node(dir: &Path, agent: &AgentProc) -> PathBuf {
    let cfg = dir.join("tui.toml");
    let tok = dir.join("token");
    std::fs::write(&tok, &agent.token).unwrap();
    let (ok, _, err) = run(&cfg, &add_node_args(&agent.url, &tok));
    assert!(ok, "{err}");
    cfg
}

fn run(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    let out = rbee(cfg).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn worker_logs_of_odd_bytes_zero_lines_unknown_ids_and_a_killed_worker() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.path().join("state"),
        &stand_in(dir.path()),
        &[],
        &[],
    );
    let cfg = add_node(dir.path(), &agent);
    let model = model_path().display().to_string();
    let (ok, id, err) = run(&cfg, &["workers", "spawn", "--model", &model]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let text = wait_for(Duration::from_secs(30), "the worker's lines", || {
        let (_, text, _) = run(&cfg, &["workers", "logs", &id]);
        text.contains("ready-marker").then_some(text)
    });
    assert_eq!(
        text.lines().next(),
        Some("bad \u{fffd}\u{fffd} bytes"),
        "{text}"
    );
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'));

    let (ok, text, err) = run(&cfg, &["workers", "logs", &id, "--lines", "0"]);
    assert!(ok && text.is_empty(), "{text} {err}");

    let (ok, _, err) = run(&cfg, &["workers", "logs", "w999", "--node", "n1"]);
    assert!(!ok && err.contains("no worker `w999`"), "{err}");

    // A follower, then the worker is killed: it ends by itself, with success, saying why.
    let mut follower = rbee(&cfg)
        .args(["workers", "logs", &id, "--follow", "--lines", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first answer is printed: from now on it asks with a cursor.
    let mut stdout = follower.stdout.take().unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready-marker");
    let (ok, _, err) = run(&cfg, &["workers", "kill", &id]);
    assert!(ok, "{err}");
    // Both pipes end when it exits (a follower that never stops would hang here; nextest's
    // slow-test limit reports it).
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut said).unwrap();
    let status = follower.wait().unwrap();
    assert!(status.success(), "{status}: {said}");
    assert!(said.contains("is gone") && said.contains(&id), "{said}");
    // After the kill its log is still readable, from the agent's disk.
    let (ok, text, err) = run(&cfg, &["workers", "logs", &id, "--node", "n1"]);
    assert!(ok, "{err}");
    assert!(text.ends_with("ready-marker\n"), "{text}");
    // Only worker ids are looked up there: a path that leads to the same file is refused.
    let sneaky = format!("../logs/{id}");
    let (ok, _, err) = run(&cfg, &["workers", "logs", &sneaky, "--node", "n1"]);
    assert!(!ok && err.contains("no worker"), "{err}");
}

#[test]
fn a_zero_timeout_is_refused_naming_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&dir.path().join("tui.toml"), &["--timeout", "0", "status"]);
    assert!(
        !ok && err.contains("--timeout") && err.contains("1..="),
        "{err}"
    );
}

#[test]
fn following_the_agents_log_ends_at_once_when_the_agent_stops() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent-own.log");
    let mut agent = AgentProc::start(
        &dir.path().join("state"),
        &["--log-file", log.to_str().unwrap()],
    );
    let cfg = add_node(dir.path(), &agent);
    // A ten-minute budget per poll: the follower must not wait it out.
    let mut follower = rbee(&cfg)
        .args([
            "--timeout",
            "600",
            "nodes",
            "logs",
            "n1",
            "--follow",
            "--lines",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    agent.signal_and_wait(libc::SIGTERM);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut said).unwrap();
    let status = follower.wait().unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("session closed"), "{said}");
}

#[test]
fn a_load_that_times_out_is_reported_once_with_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let hangs = rbee_testkit::hangs_while_loading(dir.path());
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[load_timeout]\nbase_secs = 1\nper_gib_secs = 0\n").unwrap();
    let agent = AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.path().join("state"),
        &hangs,
        &["--config", conf.to_str().unwrap()],
        &[],
    );
    let cfg = add_node(dir.path(), &agent);
    let model = model_path().display().to_string();
    let (ok, _, err) = run(&cfg, &["workers", "spawn", "--model", &model, "--wait"]);
    assert!(!ok, "{err}");
    assert_eq!(err.matches("load timed out").count(), 1, "{err}");
    // Seconds with a decimal: `after 1 s (limit 1 s)` read as if it had not waited at all.
    assert!(err.contains("(limit 1.0 s"), "{err}");
}
