//! `rbee-tui chat` against the real agent and a real worker on the real instruct model: one turn
//! with `--prompt` (JSON, deterministic for a seed, ends at the end of the turn), and the
//! interactive conversation fed through stdin (history sent with each turn, `/clear`, EOF).
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::run::{run_bounded, run_bounded_stdin, Run};
use rbee_testkit::{bin, model_dir, AgentProc};

const TUI: &str = env!("CARGO_BIN_EXE_rbee-tui");

fn tui_cmd(cfg: &Path, local_state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(TUI);
    for var in [
        "RUST_LOG",
        "RBEE_CONFIG",
        "RBEE_LOG_FILE",
        "RBEE_LOCAL_STATE",
        "RBEE_AGENT_BIN",
        "RBEE_MODEL_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(cfg).args(args);
    cmd.env("RBEE_LOCAL_STATE", local_state)
        .env("RBEE_AGENT_BIN", bin("rbee-agent"))
        .env("RBEE_MODEL_DIR", model_dir());
    cmd
}

/// `prompt_tokens` and `generated_tokens` of every `usage:` line on stderr.
fn usages(stderr: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    stderr
        .lines()
        .filter(|l| l.starts_with("usage: "))
        .map(|l| (field(l, "prompt_tokens="), field(l, "generated_tokens=")))
        .collect()
}

#[test]
fn chat_one_turn_and_a_conversation_on_the_real_model() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let cfg = dir.path().join("conf/tui.toml");
    let local_state = dir.path().join("local-state");
    let tui = |args: &[&str]| -> Run {
        let r = run_bounded(tui_cmd(&cfg, &local_state, args), Duration::from_secs(120));
        eprintln!(
            "[{:>5.1}s] rbee-tui {} → {}",
            t0.elapsed().as_secs_f64(),
            args.join(" "),
            r.status
        );
        r
    };
    let token_file = state.join("token");
    tui(&[
        "nodes",
        "add",
        "n1",
        "--url",
        &agent.url,
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .ok();

    // The NAME `models list` prints is what we spawn and chat with.
    let models = tui(&["models", "list", "--json"]).json();
    let name = models
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .find(|n| n.contains("SmolLM2-135M-Instruct"))
        .unwrap_or_else(|| panic!("the test model is not listed: {models}"))
        .to_string();

    // No worker yet: refused, saying how to start one.
    let line = tui(&["chat", "--model", &name, "--prompt", "hi"]).fails_with(&[&name]);
    assert!(line.contains("workers spawn"), "{line}");

    tui(&[
        "--timeout",
        "90",
        "workers",
        "spawn",
        "--model",
        &name,
        "--wait",
    ])
    .ok();

    // One turn, twice with the same seed: the same answer, ended by the model's end of turn.
    let ask = [
        "chat",
        "--model",
        &name,
        "--prompt",
        "What is the capital of France?",
        "--json",
        "--seed",
        "1",
        "--temperature",
        "0",
        "--max-tokens",
        "200",
    ];
    let a = tui(&ask).json();
    let b = tui(&ask).json();
    let text = a["text"].as_str().expect("text");
    assert!(!text.trim().is_empty(), "{a}");
    assert!(text.contains("Paris"), "{a}");
    assert_eq!(a["finish_reason"], "eos", "{a}");
    assert!(
        a["usage"]["generated_tokens"].as_u64().unwrap() < 200,
        "{a}"
    );
    assert_eq!(a["text"], b["text"], "same seed, same answer");

    conversation_through_stdin(&cfg, &local_state, dir.path(), &name);
    eprintln!("chat test took {:.1}s", t0.elapsed().as_secs_f64());
    drop(agent);
}

/// The conversation through stdin: two turns, a new conversation, the same first turn, EOF.
fn conversation_through_stdin(cfg: &Path, local_state: &Path, dir: &Path, name: &str) {
    let input = dir.join("input.txt");
    std::fs::write(
        &input,
        "What is the capital of France?\nAnd what language do people speak there?\n/clear\n\
         What is the capital of France?\n",
    )
    .unwrap();
    let args = [
        "chat",
        "--model",
        name,
        "--seed",
        "1",
        "--temperature",
        "0",
        "--max-tokens",
        "200",
    ];
    let r = run_bounded_stdin(
        tui_cmd(cfg, local_state, &args),
        Stdio::from(std::fs::File::open(&input).unwrap()),
        Duration::from_secs(180),
    );
    r.ok();
    assert!(
        !r.stdout.contains(">>> "),
        "no prompt when stdin is not a terminal: {}",
        r.stdout
    );
    let u = usages(&r.stderr);
    assert_eq!(u.len(), 3, "three answers: {}", r.stderr);
    // The second turn carried the first question and answer: more prompt than both together.
    assert!(
        u[1].0 > u[0].0 + u[0].1,
        "history not sent: {u:?}\n{}",
        r.stderr
    );
    // After /clear the conversation starts over: the first turn's prompt exactly.
    assert_eq!(u[2].0, u[0].0, "/clear kept history: {u:?}");
    assert!(r.stdout.contains("Paris"), "{}", r.stdout);
}
