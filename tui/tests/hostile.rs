//! Hostile or careless use of the real `rbee-tui` binary: parallel config writers, absurd
//! flags, remote paths that would forge the probe's output, and names from an agent (a real
//! `rbee-agent`) that carry terminal escape sequences.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rbee_testkit::AgentProc;

const TUI: &str = env!("CARGO_BIN_EXE_rbee-tui");

fn tui(config: &Path) -> Command {
    let mut cmd = Command::new(TUI);
    for var in ["RUST_LOG", "RBEE_CONFIG", "RBEE_LOG_FILE"] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(config);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn parallel_nodes_add_loses_no_node_and_the_config_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/tui.toml");
    let tok = dir.path().join("token");
    std::fs::write(&tok, "t").unwrap();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut c = tui(&cfg);
            c.args(["nodes", "add", &format!("n{i}"), "--url"])
                .arg(format!("ws://127.0.0.1:{}", 1000 + i))
                .arg("--token-file")
                .arg(&tok)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut list = tui(&cfg);
    list.args(["nodes", "list", "--json"]);
    let out = run(list);
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut want: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    want.sort_unstable();
    assert_eq!(names, want, "every parallel `nodes add` is in the file");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config mode {mode:o}");
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(cfg.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn absurd_timeout_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tui(&dir.path().join("tui.toml"));
    c.args(["--timeout", "18446744073709551615", "status"]);
    let out = run(c);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--timeout")
            && stderr.contains("1..=31536000")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn remote_dirs_with_control_characters_are_refused_at_nodes_add() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tui.toml");
    for (flag, value) in [
        ("--remote-dir", "/srv/rbee\nagent_pid=1"),
        ("--model-dir", "/m\x1b[2J"),
    ] {
        let mut c = tui(&cfg);
        // Port 1 on loopback: nothing is contacted, the refusal comes first.
        c.args([
            "nodes",
            "add",
            "gpu",
            "--ssh",
            "me@127.0.0.1:1",
            flag,
            value,
        ]);
        let out = run(c);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("contains a newline or control character")
                && stderr.lines().count() == 1
                && !stderr.contains('\x1b'),
            "{stderr:?}"
        );
        assert!(!cfg.exists(), "nothing is recorded");
    }
}

#[test]
fn names_from_the_agent_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let evil = "evil\x1b]0;pwned\x07\x1b[2J";
    std::fs::write(models.join(format!("{evil}.gguf")), b"GGUF").unwrap();
    let state = dir.path().join("state");
    let agent = AgentProc::start(&state, &["--model-dir", models.to_str().unwrap()]);
    let cfg = dir.path().join("tui.toml");
    let mut add = tui(&cfg);
    add.args(["nodes", "add", "n1", "--url", &agent.url, "--token-file"])
        .arg(state.join("token"));
    let out = run(add);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut list = tui(&cfg);
    list.args(["models", "list"]);
    let out = run(list);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("evil\\x1b]0;pwned\\x07\\x1b[2J"),
        "{stdout:?}"
    );
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\x07'),
        "{stdout:?}"
    );
    // An error naming it (spawning that name) is escaped on stderr too.
    let mut spawn = tui(&cfg);
    spawn.args(["workers", "spawn", "--model", &format!("{evil}-nope")]);
    let out = run(spawn);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("evil\\x1b") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}
