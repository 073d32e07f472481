//! Logs as an operator reads them: a real agent whose "worker" is a small script that writes
//! terminal escape sequences, a 1 MB line and then thousands of numbered lines to its stderr.
//! `rbee-tui workers logs` prints them without colours and with no control character left,
//! `--follow` prints each new line once, `nodes logs` prints the agent's own log, and the
//! agent's size rotation of the worker's log under that writer loses no line and splits none.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::run::add_node_args;
use rbee_testkit::{model_path, wait_for, AgentProc};
use serde_json::Value;

/// Numbered lines the stand-in writes after its escapes and its long line.
const NUMBERED: usize = 20_000;
/// Length of the long line.
const LONG: usize = 1 << 20;

/// A worker stand-in: it writes its log, waits for `go` before the numbered lines (so a
/// follower can start first), then sleeps like a worker that never gets ready.
fn stand_in(dir: &Path) -> PathBuf {
    let script = dir.join("noisy-worker");
    let go = dir.join("go");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
printf '\033[2m2026-11-30\033[0m \033[32m INFO\033[0m loading\n' >&2
printf 'title\033]0;pwned\007 bell\r\n' >&2
head -c {LONG} /dev/zero | tr '\0' 'x' >&2; echo >&2
echo waiting >&2
while [ ! -e '{go}' ]; do sleep 0.05; done
i=0; while [ $i -lt {NUMBERED} ]; do echo "line $i" >&2; i=$((i+1)); done
echo done >&2
exec sleep 100000
"#,
            go = go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn rbee(cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbee-tui"));
    cmd.arg("--config")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .env_remove("RBEE_CONFIG");
    cmd
}

fn run_ok(cfg: &Path, args: &[&str]) -> String {
    let out = rbee(cfg).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rbee-tui {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `workers logs --follow` running in the background, its stdout read line by line.
struct Follower {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(cfg: &Path, id: &str) -> Follower {
        let mut child = rbee(cfg)
            .args(["workers", "logs", id, "--follow", "--lines", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                if tx.send(l.unwrap()).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// Lines up to and including the first equal to `last`.
    fn until(&self, last: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("follower stopped before `{last}` ({e}): {got:?}"));
            let end = l == last;
            got.push(l);
            if end {
                return got;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn worker_logs_are_plain_followed_and_rotated_without_losing_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[logs]\nmax_bytes = 65536\nkeep = 1000\n").unwrap();
    let agent_log = dir.path().join("agent-own.log");
    let agent = AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.path().join("state"),
        &stand_in(dir.path()),
        &[
            "--config",
            conf.to_str().unwrap(),
            "--log-file",
            agent_log.to_str().unwrap(),
        ],
        &[],
    );
    let cfg = dir.path().join("tui.toml");
    let tok = dir.path().join("token");
    std::fs::write(&tok, &agent.token).unwrap();
    run_ok(&cfg, &add_node_args(&agent.url, &tok));
    let model = model_path().display().to_string();
    let id = run_ok(&cfg, &["workers", "spawn", "--model", &model]);
    let id = id.trim();

    // The head of the log, as text: colours gone, the title sequence and CR made visible, the
    // 1 MB line cut in the answer saying so.
    wait_for(Duration::from_secs(30), "the worker's first lines", || {
        let text = run_ok(&cfg, &["workers", "logs", id, "--lines", "10"]);
        text.contains("waiting").then_some(())
    });
    let text = run_ok(&cfg, &["workers", "logs", id, "--lines", "10"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "2026-11-30  INFO loading", "{text:.300}");
    assert_eq!(lines[1], "title\\x1b]0;pwned\\x07 bell\\x0d");
    assert!(
        lines[2].starts_with("xxxx") && lines[2].ends_with("more bytes of this line not shown]")
    );
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "no control character printed"
    );
    // --json keeps the lines as the worker wrote them.
    let json: Value = serde_json::from_str(&run_ok(
        &cfg,
        &[
            "workers", "logs", id, "--lines", "2", "--node", "n1", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(json["lines"][1], "waiting", "{json:.300}");
    assert!(json["lines"][0].as_str().unwrap().len() > 60_000);

    // --follow: started now, it prints the last line, then every new line exactly once.
    let follower = Follower::start(&cfg, id);
    assert_eq!(follower.until("waiting"), ["waiting"]);
    std::fs::write(dir.path().join("go"), "").unwrap();
    let followed = follower.until("done");
    let numbered: Vec<&String> = followed.iter().filter(|l| l.starts_with("line ")).collect();
    let skipped: Vec<&String> = followed
        .iter()
        .filter(|l| l.contains("not shown"))
        .collect();
    // The agent keeps the last 1000 lines in memory: what a follower missed is counted, and what
    // it got is in order with no line twice.
    let mut last = None;
    for l in &numbered {
        let n: usize = l["line ".len()..].parse().unwrap();
        assert!(last.is_none_or(|p| n > p), "out of order or repeated: {l}");
        last = Some(n);
    }
    assert_eq!(last, Some(NUMBERED - 1));
    let said_skipped: u64 = skipped
        .iter()
        .map(|l| {
            l.trim_start_matches("… ")
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(numbered.len() as u64 + said_skipped, NUMBERED as u64);
    drop(follower);

    worker_log_files_hold_every_line(&agent.state_dir, id);
    agent_log_is_read_by_nodes_logs(&cfg, &agent_log);
    run_ok(&cfg, &["workers", "kill", id]);
}

/// The rotated files, oldest first, hold every line the worker wrote, whole and once.
fn worker_log_files_hold_every_line(state: &Path, id: &str) {
    let log = state.join("logs").join(format!("{id}.log"));
    // `NAME.N` … `NAME.1`, then `NAME`: oldest first.
    let mut files: Vec<PathBuf> = (1..=1000)
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", log.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(log);
    assert!(files.len() > 4, "rotated at 64 KiB: {files:?}");
    let mut all = String::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.ends_with('\n'),
            "{} ends with a whole line",
            f.display()
        );
        assert!(
            text.len() <= 65_536 || text.lines().count() == 1,
            "{} is within the limit unless it is one long line",
            f.display()
        );
        all.push_str(&text);
    }
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 4 + NUMBERED + 1);
    assert_eq!(lines[2].len(), LONG);
    assert!(lines[0].contains("\x1b[32m"), "kept as written");
    for (i, l) in lines[4..4 + NUMBERED].iter().enumerate() {
        assert_eq!(*l, format!("line {i}"));
    }
    assert_eq!(lines[4 + NUMBERED], "done");
}

/// `nodes logs` reads the agent's own log file through the session.
fn agent_log_is_read_by_nodes_logs(cfg: &Path, agent_log: &Path) {
    let text = run_ok(cfg, &["nodes", "logs", "n1", "--lines", "1000"]);
    assert!(text.contains("rbee-agent listening"), "{text:.2000}");
    assert!(
        std::fs::read_to_string(agent_log)
            .unwrap()
            .contains("rbee-agent listening"),
        "the agent wrote its own log file"
    );
    assert!(!text.contains('\x1b'));
}

/// The local agent rbee-tui starts writes (and rotates) its own log, and `nodes logs local`
/// reads it through the session.
#[test]
fn the_local_agent_log_is_read_by_nodes_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("none.toml");
    let state = dir.path().join("local");
    let run = |args: &[&str]| {
        let out = rbee(&cfg)
            .args(args)
            .env("RBEE_LOCAL_STATE", &state)
            .env("RBEE_AGENT_BIN", rbee_testkit::bin("rbee-agent"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = run(&["nodes", "logs", "local", "--lines", "100"]);
    // Whatever happens, the detached agent this started goes away with the test.
    let pid = std::fs::read_to_string(state.join(rbee_proto::statedir::LOCK)).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        // SAFETY: signalling the agent this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    assert!(ok && text.contains("rbee-agent listening"), "{text}");
    assert!(!text.contains('\x1b'));
}
