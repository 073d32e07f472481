//! `rbee-tui chat` against the real agent and a real worker on the real instruct model: one turn
//! with `--prompt` (JSON, deterministic for a seed, ends at the end of the turn), and the
//! interactive conversation fed through stdin (history sent with each turn, `/clear`, EOF).
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::run::{add_node_args, run_bounded, run_bounded_stdin, test_model_name, Run};
use common::tmux::Tmux;
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
        let r = run_bounded(tui_cmd(&cfg, &local_state, args), Duration::from_secs(300));
        eprintln!(
            "[{:>5.1}s] rbee-tui {} → {}",
            t0.elapsed().as_secs_f64(),
            args.join(" "),
            r.status
        );
        r
    };
    let token_file = state.join("token");
    tui(&add_node_args(&agent.url, &token_file)).ok();

    // The NAME `models list` prints is what we spawn and chat with.
    let name = test_model_name(&tui(&["models", "list", "--json"]).json());

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
    // A loaded machine (2 cores, builds beside us) can take a minute per answer: a wide deadline.
    let ask = [
        "--timeout",
        "240",
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
    eprintln!("answer: {a}");
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
        "--timeout",
        "240",
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
        Duration::from_secs(600),
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

// ---------------------------------------------------------------------------------------------
// The dashboard's conversation pane in a real terminal (tmux on a private socket).

/// The pane's title line.
fn pane_title(screen: &str) -> Option<&str> {
    screen.lines().find(|l| l.contains("Prompt →"))
}

/// A real agent recorded as node n1 in `cfg`, with one ready worker of the test model.
fn agent_with_a_worker(dir: &Path, cfg: &Path) -> AgentProc {
    let state = dir.join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let local_state = dir.join("local-state");
    let token = state.join("token");
    let tui =
        |args: &[&str]| run_bounded(tui_cmd(cfg, &local_state, args), Duration::from_secs(120));
    tui(&add_node_args(&agent.url, &token)).ok();
    let model = rbee_testkit::model_path();
    tui(&[
        "--timeout",
        "90",
        "workers",
        "spawn",
        "--model",
        model.to_str().unwrap(),
        "--wait",
    ])
    .ok();

    agent
}

/// The dashboard on `cfg` in a fresh 120×36 tmux session.
fn dashboard_in_tmux(dir: &Path, cfg: &Path) -> Tmux {
    let conf = dir.join("tmux.conf");
    std::fs::write(&conf, "set -g status off\nset -sg escape-time 0\n").unwrap();
    let tmux = Tmux::new("chat", "chat");
    let mut new = tmux.cmd(&[
        "-f",
        conf.to_str().unwrap(),
        "new-session",
        "-d",
        "-s",
        "chat",
    ]);
    new.args(["-x", "120", "-y", "36"])
        .arg(TUI)
        .arg("--config")
        .arg(cfg);
    new.arg("--log-file").arg(dir.join("tui.log"));
    new.env_remove("TMUX").env("TERM", "xterm-256color");
    run_bounded(new, Duration::from_secs(10)).ok();

    tmux
}

/// The pane's title says the answer ended (or was cancelled).
fn finished(s: &str) -> bool {
    pane_title(s).is_some_and(|t| {
        !t.contains("streaming")
            && [" · eos", " · length", " · cancelled"]
                .iter()
                .any(|f| t.contains(f))
    })
}

#[test]
fn dashboard_conversation_in_tmux() {
    let version = Command::new("tmux").arg("-V").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs `tmux` on PATH (apt-get install tmux): {version:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/tui.toml");
    let agent = agent_with_a_worker(dir.path(), &cfg);
    let tmux = dashboard_in_tmux(dir.path(), &cfg);
    tmux.wait_screen(
        Duration::from_secs(30),
        "n1 connected with a ready worker",
        |s| {
            s.lines()
                .any(|l| l.contains("n1") && l.contains("● connected"))
        },
    );
    // `p` on the Nodes screen: any ready worker of the node's serving model; a chat, since
    // SmolLM2-Instruct has a template.
    tmux.wait_screen(Duration::from_secs(30), "the pane to open as a chat", |s| {
        if pane_title(s).is_none() {
            tmux.keys(&["p"]);
        }
        pane_title(s).is_some_and(|t| t.contains("· chat"))
    });
    tmux.type_text("What is the capital of France?");
    tmux.keys(&["Enter"]);
    let tokens = |s: &str| -> u32 {
        pane_title(s)
            .and_then(|t| {
                t.split(" · ")
                    .find_map(|seg| seg.trim().strip_suffix(" tok"))
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // The whole answer (the worker decodes 100+ tok/s here; Esc to cancel a long one raced
    // with its end and then closed the pane instead).
    let screen = tmux.wait_screen(Duration::from_secs(120), "the answer to finish", |s| {
        finished(s) && tokens(s) > 0
    });
    eprintln!("{screen}");
    assert!(!screen.contains("error:"), "{screen}");
    assert!(
        screen.contains("user › What is the capital of France?"),
        "{screen}"
    );
    let answer = screen
        .lines()
        .find_map(|l| l.split("assistant › ").nth(1))
        .unwrap_or_else(|| panic!("no assistant turn:\n{screen}"));
    assert!(
        !answer
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .is_empty(),
        "{screen}"
    );

    // A second turn: the first exchange stays on screen above it (and went with it).
    let first_done = finished(&screen) && !screen.contains(" · cancelled");
    if first_done {
        tmux.type_text("And of Italy?");
        tmux.keys(&["Enter"]);
        let screen = tmux.wait_screen(Duration::from_secs(90), "the second answer", |s| {
            s.contains("user › And of Italy?") && finished(s)
        });
        eprintln!("{screen}");
        // The pane follows the end; a long second answer may scroll the first turn away.
        let second = screen.find("user › And of Italy?").unwrap();
        assert!(screen[second..].contains("assistant › "), "{screen}");
    }

    // Ctrl-N: a new conversation, the turns are gone.
    tmux.keys(&["C-n"]);
    let screen = tmux.wait_screen(Duration::from_secs(5), "the conversation to clear", |s| {
        !s.contains("user ›") && !s.contains("assistant ›")
    });
    assert!(screen.contains("new conversation"), "{screen}");
    drop(tmux);
    drop(agent);
}

/// Ctrl-C (SIGINT) during an answer cancels it and the conversation goes on; end of input
/// then leaves with exit 0.
#[test]
fn ctrl_c_cancels_the_answer_and_stays() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/tui.toml");
    let _agent = agent_with_a_worker(dir.path(), &cfg);
    let model = rbee_testkit::model_path();
    let mut cmd = tui_cmd(
        &cfg,
        &dir.path().join("local-state"),
        &[
            "--timeout",
            "240",
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "400",
        ],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let seen2 = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen2
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    writeln!(
        stdin,
        "Write a very long story about a dragon who learns to bake bread."
    )
    .unwrap();
    rbee_testkit::wait_for(Duration::from_secs(120), "the answer to start", || {
        (seen.lock().unwrap().len() >= 20).then_some(())
    });
    // SAFETY: signalling the child this test started and still holds.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_secs(3));
    writeln!(stdin, "What is the capital of France?").unwrap();
    drop(stdin);
    let status = rbee_testkit::wait_for(Duration::from_secs(300), "chat to end", || {
        child.try_wait().unwrap()
    });
    reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "{status}\nstderr: {stderr}");
    assert!(stderr.lines().any(|l| l == "cancelled"), "{stderr}");
    assert_eq!(
        usages(&stderr).len(),
        1,
        "only the second turn finished: {stderr}"
    );
}
