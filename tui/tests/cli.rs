//! The subcommands as scripts use them: the real binary, a config file in a temp dir, and a
//! protocol-speaking stand-in agent on a real socket. Success is exit 0 with the answer on stdout;
//! failure is a non-zero exit and exactly one `rbee-tui: …` line on stderr.
mod common;

use std::path::{Path, PathBuf};

use rbee_testkit::standin::{StandIn, MODEL_REF};
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Failed with one line on stderr containing `needle`.
    fn fails_with(&self, needle: &str) {
        assert_ne!(self.code, 0, "expected failure; stdout: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr, got: {:?}", self.stderr);
        assert!(lines[0].starts_with("rbee-tui: "), "{}", lines[0]);
        assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
    }
}

async fn rbee(config: &Path, env: &[(&str, &Path)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbee-tui"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RBEE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .expect("rbee-tui hung")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, token).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_against_an_agent() {
    let agent = StandIn::start("sekret").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/tui.toml");
    let tok = token_file(dir.path(), "token", "sekret\n");
    let tok = tok.to_str().unwrap();
    let url = agent.url();

    nodes_are_added_and_listed(&cfg, tok, &url).await;
    models_and_workers(&cfg).await;
    infer_streams_or_answers_json(&cfg).await;
    status_names_the_down_node(&cfg, tok).await;
    wrong_token_and_removal(&cfg, dir.path(), &url).await;
    drop(agent);
}

/// nodes: empty, add, duplicate, bad url.
async fn nodes_are_added_and_listed(cfg: &Path, tok: &str, url: &str) {
    let r = |args: &'static [&'static str]| rbee(cfg, &[], args);
    // nodes: empty, add, duplicate, bad url.
    assert_eq!(
        rbee(cfg, &[], &["nodes", "list", "--json"]).await.json(),
        serde_json::json!([])
    );
    rbee(
        cfg,
        &[],
        &["nodes", "add", "fake", "--url", url, "--token-file", tok],
    )
    .await
    .ok();
    rbee(
        cfg,
        &[],
        &["nodes", "add", "fake", "--url", url, "--token-file", tok],
    )
    .await
    .fails_with("already exists");
    rbee(
        cfg,
        &[],
        &[
            "nodes",
            "add",
            "web",
            "--url",
            "http://x:1",
            "--token-file",
            tok,
        ],
    )
    .await
    .fails_with("ws://");
    let nodes = r(&["nodes", "list", "--json"]).await.json();
    assert_eq!(nodes[0]["name"], "fake");
    assert_eq!(nodes[0]["url"], url);
    assert!(r(&["nodes", "list"]).await.ok().stdout.contains("fake"));
}

/// models, spawn --wait, workers list.
async fn models_and_workers(cfg: &Path) {
    let r = |args: &'static [&'static str]| rbee(cfg, &[], args);
    // models
    let models = r(&["models", "list", "--json"]).await.json();
    assert_eq!(models[0]["name"], "tiny");
    assert_eq!(models[0]["ref"], MODEL_REF);
    assert_eq!(models[0]["node"], "fake");
    assert_eq!(models[0]["format"], "gguf");
    assert!(models[0]["size_bytes"].as_u64().unwrap() > 0);

    // spawn --wait: ready is exit 0, failed is exit 1 with the reason.
    let w = rbee(
        cfg,
        &[],
        &[
            "workers", "spawn", "--node", "fake", "--model", MODEL_REF, "--wait", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(
        (w["id"].as_str(), w["state"].as_str(), w["node"].as_str()),
        (Some("w1"), Some("ready"), Some("fake"))
    );
    let broken = rbee(
        cfg,
        &[],
        &[
            "workers",
            "spawn",
            "--model",
            "/models/broken.gguf",
            "--wait",
        ],
    )
    .await;
    assert_eq!(broken.stdout, "w2\n", "the id comes first");
    broken.fails_with("exit status 101");
    let plain = r(&["workers", "spawn", "--model", "/models/tiny.gguf"]).await;
    assert_eq!(plain.ok().stdout, "w3\n");

    // workers list
    let ws = r(&["workers", "list", "--json"]).await.json();
    let ids: Vec<&str> = ws
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w1", "w2", "w3"]);
    assert_eq!(ws[1]["state"], "failed");
    assert_eq!(ws[0]["node"], "fake");
    for key in ["pid", "restarts", "device", "model"] {
        assert!(ws[0].get(key).is_some(), "{key} missing");
    }
}

/// infer: text streams to stdout, usage to stderr; --json is one object.
async fn infer_streams_or_answers_json(cfg: &Path) {
    let r = |args: &'static [&'static str]| rbee(cfg, &[], args);
    // infer: text streams to stdout, usage to stderr; --json is one object.
    let out = r(&[
        "infer",
        "--node",
        "fake",
        "--worker",
        "w1",
        "--prompt",
        "hello world",
    ])
    .await;
    assert_eq!(out.ok().stdout, "echo: hello world");
    assert!(
        out.stderr.starts_with("usage: worker=w1 finish=eos"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("generated_tokens=3"), "{}", out.stderr);
    let j = rbee(
        cfg,
        &[],
        &[
            "infer",
            "--model",
            MODEL_REF,
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(
        (
            j["text"].as_str(),
            j["worker"].as_str(),
            j["finish_reason"].as_str()
        ),
        (Some("echo: "), Some("w1"), Some("eos"))
    );
    assert_eq!(j["usage"]["generated_tokens"], 1);
    r(&["infer", "--worker", "w9", "--prompt", "x"])
        .await
        .fails_with("not_found");
}

/// status with a second node that is down; with two nodes spawn must name one, kill finds the
/// worker on the reachable one.
async fn status_names_the_down_node(cfg: &Path, tok: &str) {
    let r = |args: &'static [&'static str]| rbee(cfg, &[], args);
    // status, with a second node that is down.
    let down_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down_url = format!("ws://127.0.0.1:{down_port}");
    rbee(
        cfg,
        &[],
        &[
            "nodes",
            "add",
            "down",
            "--url",
            &down_url,
            "--token-file",
            tok,
        ],
    )
    .await
    .ok();
    let st = r(&["status", "--json"]).await.json();
    assert_eq!(st["nodes"][0]["state"], "connected");
    assert_eq!(st["nodes"][0]["workers"].as_array().unwrap().len(), 3);
    assert!(st["nodes"][0]["latency_ms"].is_u64());
    assert_eq!(
        st["nodes"][0]["telemetry"]["gpu_status"],
        "no NVIDIA driver"
    );
    assert_eq!(st["nodes"][1]["state"], "unreachable");
    assert!(
        st["nodes"][1]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{}",
        st["nodes"][1]
    );
    // With two nodes, spawn must name one; kill finds the worker on the reachable one.
    r(&["workers", "spawn", "--model", MODEL_REF])
        .await
        .fails_with("--node");
    let k = r(&["workers", "kill", "w3"]).await;
    assert_eq!(k.ok().stdout, "killed w3 on fake\n");
    r(&["workers", "kill", "w3"])
        .await
        .fails_with("no worker `w3`");
    r(&["workers", "restart", "w1", "--node", "fake", "--json"])
        .await
        .json();
    r(&["workers", "list", "--node", "nope"])
        .await
        .fails_with("no node named `nope`");
    r(&["workers", "list", "--node", "down"])
        .await
        .fails_with("cannot reach agent");
}

/// A wrong token is refused in one line; nodes are removed.
async fn wrong_token_and_removal(cfg: &Path, dir: &Path, url: &str) {
    let r = |args: &'static [&'static str]| rbee(cfg, &[], args);
    // Wrong token: refused, said in one line.
    let bad = token_file(dir, "bad", "wrong");
    rbee(
        cfg,
        &[],
        &[
            "nodes",
            "add",
            "bad",
            "--url",
            url,
            "--token-file",
            bad.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    r(&["models", "list", "--node", "bad"])
        .await
        .fails_with("refused the token");

    // Remove nodes.
    r(&["nodes", "rm", "down"]).await.ok();
    r(&["nodes", "rm", "down"])
        .await
        .fails_with("no node named `down`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tui.toml");
    std::fs::write(
        &cfg,
        "[[nodes]]\nname = 'a'\nurl = 'ws://x:1'\ntoken_fle = 't'\n",
    )
    .unwrap();
    rbee(&cfg, &[], &["nodes", "list"])
        .await
        .fails_with("token_fle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nodes_the_local_agent_is_started_and_its_failure_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("none.toml");
    let state = dir.path().join("local");
    // `false` stands in for an agent that cannot start.
    let env = [
        ("RBEE_LOCAL_STATE", state.as_path()),
        ("RBEE_AGENT_BIN", Path::new("/bin/false")),
    ];
    let r = rbee(&cfg, &env, &["workers", "list"]).await;
    r.fails_with("local agent: rbee-agent exited");
    assert!(
        state.join("agent.log").exists(),
        "the agent's output goes to a log in its state dir"
    );
    let missing = [
        ("RBEE_LOCAL_STATE", state.as_path()),
        ("RBEE_AGENT_BIN", Path::new("/nonexistent/rbee-agent")),
    ];
    rbee(&cfg, &missing, &["status"]).await.ok();
    let st = rbee(&cfg, &missing, &["status", "--json"]).await.json();
    assert_eq!(st["nodes"][0]["name"], "local");
    assert!(
        st["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("RBEE_AGENT_BIN"),
        "{st}"
    );
}
