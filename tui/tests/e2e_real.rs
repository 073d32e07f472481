//! End-to-end with nothing faked: the real `rbee-tui` binary drives the real `rbee-agent`, which
//! runs real `rbee-worker` processes on the real small model.
//!
//! * `subcommands_against_a_real_agent`: every headless subcommand a script would use, against an
//!   agent started with `rbee_testkit::AgentProc`.
//! * `dashboard_in_tmux_first_run_spawn_prompt_kill`: the dashboard in a real terminal (a tmux
//!   server on a private socket), first run with an empty config so it starts the local agent
//!   itself; keys go in with `send-keys`, the screen comes back with `capture-pane`.
//!
//! Every wait is bounded, every test has its own temp dirs, and guards stop what a test started
//! even when it fails.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::run::{add_node_args, run_bounded, Run};
use common::tmux::Tmux;
use rbee_testkit::{alive, bin, children_of, model_dir, model_path, wait_for, AgentProc};

const TUI: &str = env!("CARGO_BIN_EXE_rbee-tui");

/// Environment every `rbee-tui` run gets: nothing inherited that could point it elsewhere, and a
/// local agent (should anything fall back to it) confined to this test's temp dir.
fn tui_env(cmd: &mut Command, local_state: &Path) {
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
    cmd.env("RBEE_LOCAL_STATE", local_state)
        .env("RBEE_AGENT_BIN", bin("rbee-agent"))
        .env("RBEE_MODEL_DIR", model_dir());
}

// ---------------------------------------------------------------------------------------------
// Subcommands.

#[test]
fn subcommands_against_a_real_agent() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let cfg = dir.path().join("conf/tui.toml");
    let local_state = dir.path().join("local-state");
    let tui = |args: &[&str]| {
        let mut cmd = Command::new(TUI);
        cmd.arg("--config").arg(&cfg).args(args);
        tui_env(&mut cmd, &local_state);
        let r = run_bounded(cmd, Duration::from_secs(120));
        eprintln!(
            "[{:>5.1}s] rbee-tui {} → {}",
            t0.elapsed().as_secs_f64(),
            args.join(" "),
            r.status
        );
        r
    };
    let token_file = state.join("token");

    // nodes add / list
    let r = tui(&add_node_args(&agent.url, &token_file));
    assert!(r.ok().stdout.contains("added node n1"), "{}", r.stdout);
    let nodes = tui(&["nodes", "list", "--json"]).json();
    let nodes = nodes.as_array().expect("nodes list is an array");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["name"], "n1");
    assert_eq!(nodes[0]["url"], agent.url.as_str());
    assert_eq!(
        Path::new(nodes[0]["token_file"].as_str().unwrap()),
        token_file
    );

    models_list_shows_the_real_model(&tui);
    let (id, pid) = spawn_waits_for_ready(&tui, agent.pid());
    infer_and_status(&tui, &id);

    // workers kill: the process goes away and the agent forgets it.
    let r = tui(&["workers", "kill", &id]);
    assert!(
        r.ok().stdout.contains(&format!("killed {id} on n1")),
        "{}",
        r.stdout
    );
    wait_for(
        Duration::from_secs(20),
        "killed worker's process to end",
        || (!alive(pid)).then_some(()),
    );
    let workers = tui(&["workers", "list", "--json"]).json();
    assert!(
        !workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id.as_str()),
        "{id} still listed after kill: {workers}"
    );

    // Errors: one line naming the reason, non-zero exit.
    tui(&["workers", "kill", "w999"]).fails_with(&["w999"]);
    tui(&["infer", "--node", "nope", "--model", "x", "--prompt", "hi"]).fails_with(&["nope"]);

    // nodes rm
    let r = tui(&["nodes", "rm", "n1"]);
    assert!(r.ok().stdout.contains("removed node n1"), "{}", r.stdout);
    let nodes = tui(&["nodes", "list", "--json"]).json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(0), "{nodes}");
    tui(&["nodes", "rm", "n1"]).fails_with(&["n1"]);

    assert!(
        alive(agent.pid()),
        "the agent died during the test; log:\n{}",
        agent.log()
    );
    eprintln!("subcommands test took {:.1}s", t0.elapsed().as_secs_f64());
}

/// models list: the real gguf, with its reference and size.
fn models_list_shows_the_real_model(tui: &impl Fn(&[&str]) -> Run) {
    let models = tui(&["models", "list", "--json"]).json();
    let models = models.as_array().expect("models list is an array");
    let gguf = models
        .iter()
        .find(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.contains("SmolLM2-135M-Instruct"))
        })
        .unwrap_or_else(|| panic!("the test model is not listed: {models:?}"));
    assert_eq!(gguf["node"], "n1");
    let size = std::fs::metadata(model_path()).unwrap().len();
    assert_eq!(gguf["size_bytes"].as_u64(), Some(size), "{gguf}");
    let reference = gguf["ref"].as_str().expect("ref");
    assert!(!reference.is_empty(), "{gguf}");
}

/// workers spawn --wait: the id on stdout, exit 0 once ready; workers list: ready, with a pid
/// that is the agent's child. Returns the id and the pid.
fn spawn_waits_for_ready(tui: &impl Fn(&[&str]) -> Run, agent_pid: u32) -> (String, u32) {
    let model = model_path();
    let r = tui(&[
        "--timeout",
        "90",
        "workers",
        "spawn",
        "--node",
        "n1",
        "--model",
        model.to_str().unwrap(),
        "--wait",
    ]);
    let id = r.ok().stdout.trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "one id on stdout, got {:?}",
        r.stdout
    );

    // workers list: ready, with a pid that is the agent's child.
    let workers = tui(&["workers", "list", "--json"]).json();
    let workers = workers.as_array().expect("workers list is an array");
    let w = workers
        .iter()
        .find(|w| w["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {workers:?}"));
    assert_eq!(w["state"], "ready", "{w}");
    assert_eq!(w["node"], "n1", "{w}");
    let pid = w["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {w}")) as u32;
    assert!(alive(pid), "worker pid {pid} is not running");
    assert!(
        children_of(agent_pid).contains(&pid),
        "worker {pid} is not a child of the agent"
    );
    (id, pid)
}

/// infer: greedy, the model knows this one; status --json: connected, with our worker.
fn infer_and_status(tui: &impl Fn(&[&str]) -> Run, id: &str) {
    let r = tui(&[
        "infer",
        "--node",
        "n1",
        "--worker",
        id,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    r.ok();
    assert!(
        r.stdout.contains("Paris"),
        "stdout: {:?}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with(&format!("usage: worker={id} "))),
        "no usage line: {}",
        r.stderr
    );

    // status --json: connected, with our worker.
    let st = tui(&["status", "--json"]).json();
    let node = &st["nodes"][0];
    assert_eq!(node["name"], "n1", "{st}");
    assert_eq!(node["state"], "connected", "{st}");
    let listed = node["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers: {st}"));
    assert!(
        listed
            .iter()
            .any(|w| w["id"] == id && w["state"] == "ready"),
        "{st}"
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard in tmux.

const COLS: u16 = 120;
const ROWS: u16 = 36;
const SESSION: &str = "rbee";

/// The local agent the dashboard started, stopped on drop if it still runs (a failed test must
/// not leave agents or workers behind).
struct LocalAgentGuard {
    state_dir: PathBuf,
}

impl LocalAgentGuard {
    /// The agent's pid from `agent.lock`, while some process holds the lock.
    fn pid(&self) -> Option<u32> {
        let lock = self.state_dir.join("agent.lock");
        if !rbee_tui::nodes::local::lock_held(&lock) {
            return None;
        }
        std::fs::read_to_string(lock).ok()?.trim().parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for LocalAgentGuard {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else { return };
        // SAFETY: signalling the agent this test started (the lock says it is still running).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The workers-table row of `id` (`│›w1   SmolLM2…  cpu  ready …│`), if shown.
fn worker_row<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        let cells = l.trim_start_matches('│').trim_start_matches(['›', ' ']);
        l.starts_with('│') && cells.starts_with(&format!("{id} ")) && cells.contains("SmolLM2")
    })
}

#[test]
fn dashboard_in_tmux_first_run_spawn_prompt_kill() {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    check_tmux(&step);

    let dir = tempfile::tempdir().unwrap();
    let local_state = dir.path().join("local-agent");
    let cfg = dir.path().join("tui.toml"); // never written: an empty config, the first run
    let log_file = dir.path().join("tui.log");
    let tmux_conf = dir.path().join("tmux.conf");
    // No status line (the whole 120×36 is the dashboard's); a finished pane stays, to be captured.
    std::fs::write(&tmux_conf, "set -g status off\nset -g remain-on-exit on\n").unwrap();
    let _agent = LocalAgentGuard {
        state_dir: local_state.clone(),
    };
    let tmux = Tmux::new("e2e", SESSION);

    let exit_file = start_dashboard(&tmux, dir.path(), &local_state, &cfg, &log_file, &tmux_conf);
    step("dashboard started in tmux");

    // First run: no nodes configured, so it starts the local agent and connects to it.
    let screen = tmux.wait_screen(Duration::from_secs(40), "the local node to connect", |s| {
        s.lines()
            .any(|l| l.contains("local") && l.contains("● connected"))
    });
    assert!(screen.contains("1/1 up"), "{screen}");
    assert!(
        !cfg.exists(),
        "the dashboard must not write a config on its own"
    );
    let agent_pid = _agent
        .pid()
        .unwrap_or_else(|| panic!("no agent holds {}/agent.lock", local_state.display()));
    assert!(alive(agent_pid));
    assert_eq!(comm(agent_pid), "rbee-agent");
    step(&format!("local agent pid {agent_pid} connected"));

    // Open the node.
    tmux.keys(&["Enter"]);
    tmux.wait_screen(Duration::from_secs(10), "the node screen", |s| {
        s.contains("Nodes › local") && s.contains("Workers (0)")
    });

    let (id, worker_pid) = spawn_from_the_dialog(&tmux, agent_pid, &step);
    prompt_and_read_the_answer(&tmux, &id, &step);
    kill_from_the_confirm_popup(&tmux, &id, worker_pid, &step);

    // Quit: the dashboard's process ends, cleanly.
    tmux.keys(&["q"]);
    let status = wait_for(
        Duration::from_secs(10),
        "the dashboard to quit on q",
        || {
            std::fs::read_to_string(&exit_file)
                .ok()
                .filter(|s| s.ends_with('\n'))
        },
    );
    assert_eq!(
        status.trim(),
        "0",
        "the dashboard's exit status; the screen:\n{}",
        tmux.capture()
    );
    step("dashboard quit");

    // The agent outlives the dashboard; stop it the documented way (pid in agent.lock).
    assert!(
        alive(agent_pid),
        "the local agent must outlive the dashboard"
    );
    assert_eq!(_agent.pid(), Some(agent_pid));
    let kids: Vec<u32> = children_of(agent_pid);
    // SAFETY: signalling the agent this test's dashboard started.
    unsafe { libc::kill(agent_pid as i32, libc::SIGTERM) };
    wait_for(
        Duration::from_secs(20),
        "the local agent to stop on SIGTERM",
        || (!alive(agent_pid)).then_some(()),
    );
    for pid in kids.iter().copied().chain([worker_pid]) {
        wait_for(
            Duration::from_secs(10),
            &format!("process {pid} ({}) to end", comm(pid)),
            || (!alive(pid)).then_some(()),
        );
    }
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(log.contains("dashboard starting"), "tui log: {log}");
    let agent_log = _agent.log();
    assert!(
        !agent_log.is_empty(),
        "the started agent logs to agent.log in its state dir"
    );
    step("agent stopped; no worker left");
}

/// This test needs a real `tmux`; say which.
fn check_tmux(step: &dyn Fn(&str)) {
    let version = Command::new("tmux").arg("-V").output();
    match &version {
        Ok(o) if o.status.success() => step(&format!(
            "using {}",
            String::from_utf8_lossy(&o.stdout).trim()
        )),
        _ => panic!(
            "this test drives the dashboard in a real terminal and needs `tmux` on PATH \
             (apt-get install tmux); `tmux -V` gave {version:?}"
        ),
    }
}

/// `rbee-tui` in a fresh tmux session of COLS×ROWS, started in `dir` with the first-run
/// environment; returns the file its exit status lands in.
fn start_dashboard(
    tmux: &Tmux,
    dir: &Path,
    local_state: &Path,
    cfg: &Path,
    log_file: &Path,
    tmux_conf: &Path,
) -> PathBuf {
    let agent_bin = bin("rbee-agent");
    let env = [
        format!("RBEE_LOCAL_STATE={}", local_state.display()),
        format!("RBEE_AGENT_BIN={}", agent_bin.display()),
        format!("RBEE_MODEL_DIR={}", model_dir().display()),
        "RUST_LOG=info".to_string(),
    ];
    let mut new = tmux.cmd(&[
        "-f",
        tmux_conf.to_str().unwrap(),
        "new-session",
        "-d",
        "-s",
        SESSION,
    ]);
    new.args(["-x", &COLS.to_string(), "-y", &ROWS.to_string()]);
    // The start directory has no ./assets/models, so the model dir is RBEE_MODEL_DIR alone.
    new.arg("-c").arg(dir);
    for e in &env {
        new.arg("-e").arg(e);
    }
    // More than one argument: tmux runs the command directly, no shell quoting involved. A shell
    // around the dashboard records its exit status: tmux 3.3 sometimes leaves a finished pane's
    // process unreaped (a zombie, `pane_dead_status` empty), so tmux cannot be asked for it.
    let exit_file = dir.join("exit-status");
    new.args(["sh", "-c", r#""$@"; echo $? > "$0""#])
        .arg(&exit_file);
    new.arg(TUI)
        .arg("--config")
        .arg(cfg)
        .arg("--log-file")
        .arg(log_file);
    for var in [
        "RBEE_CONFIG",
        "RBEE_LOG_FILE",
        "RBEE_LOCAL_STATE",
        "RBEE_AGENT_BIN",
        "RBEE_MODEL_DIR",
        "TMUX",
    ] {
        new.env_remove(var);
    }
    new.env("TERM", "xterm-256color");
    run_bounded(new, Duration::from_secs(10)).ok();
    exit_file
}

/// Spawn dialog: the real model from the model dir, on cpu; the worker turns ready as the agent's
/// only `rbee-worker` child. Returns its id and pid.
fn spawn_from_the_dialog(tmux: &Tmux, agent_pid: u32, step: &dyn Fn(&str)) -> (String, u32) {
    tmux.keys(&["s"]);
    let screen = tmux.wait_screen(
        Duration::from_secs(10),
        "the spawn dialog with the model",
        |s| {
            s.contains("Spawn on local")
                && s.lines()
                    .any(|l| l.contains("model") && l.contains("‹ SmolLM2-135M-Instruct"))
        },
    );
    assert!(
        screen
            .lines()
            .any(|l| l.contains("device") && l.contains("‹ cpu ›")),
        "{screen}"
    );
    // Pick the model: step through the whole list (the model dir may hold others) and land on it
    // again.
    let of = screen
        .lines()
        .find(|l| l.contains("‹ SmolLM2-135M-Instruct"))
        .and_then(|l| l.rsplit(" 1/").next())
        .and_then(|n| n.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("the test model is not first in the list:\n{screen}"));
    tmux.keys(&vec!["Right"; of]);
    let screen = tmux.wait_screen(Duration::from_secs(5), "the model still picked", |s| {
        s.lines()
            .any(|l| l.contains("‹ SmolLM2-135M-Instruct") && l.contains(&format!("1/{of}")))
    });
    assert!(screen.contains("count"), "{screen}");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_screen(
        Duration::from_secs(10),
        "the spawn to be acknowledged",
        |s| s.contains("spawned ") && !s.contains("Spawn on local"),
    );
    let id = screen
        .split("spawned ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no worker id in the flash:\n{screen}"))
        .to_string();
    step(&format!("spawned {id}"));

    let screen = tmux.wait_screen(
        Duration::from_secs(90),
        "the worker row to show ready",
        |s| worker_row(s, &id).is_some_and(|r| r.contains(" ready ")),
    );
    assert!(screen.contains("Workers (1)"), "{screen}");
    // The llama-family model batches: four slots on the CPU by default, none in use yet.
    let row = worker_row(&screen, &id).unwrap_or_default();
    assert!(
        row.split_whitespace().any(|c| c == "0/4"),
        "SLOTS column shows 0/4 for an idle batched worker: {row}"
    );
    let workers: Vec<u32> = children_of(agent_pid)
        .into_iter()
        .filter(|p| comm(*p) == "rbee-worker")
        .collect();
    assert_eq!(
        workers.len(),
        1,
        "one rbee-worker child of the agent, got {workers:?}"
    );
    let worker_pid = workers[0];
    step(&format!("{id} ready (pid {worker_pid})"));
    (id, worker_pid)
}

/// Prompt it: the answer streams into the pane (cancelled after a few tokens under load), with
/// TTFT and a token count in the title.
fn prompt_and_read_the_answer(tmux: &Tmux, id: &str, step: &dyn Fn(&str)) {
    tmux.keys(&["p"]);
    tmux.wait_screen(Duration::from_secs(5), "the prompt pane", |s| {
        s.contains(&format!("Prompt → {id} on local"))
    });
    let prompt = "The capital of France is";
    tmux.type_text(prompt);
    tmux.wait_screen(Duration::from_secs(5), "the typed prompt", |s| {
        s.contains(&format!("> {prompt}"))
    });
    tmux.keys(&["Enter"]);
    let finished = |s: &str| {
        s.lines()
            .find(|l| l.contains(&format!("Prompt → {id} on local")))
            .is_some_and(|title| {
                !title.contains("streaming")
                    && [" · eos", " · length", " · stop", " · contextfull"]
                        .iter()
                        .any(|f| title.contains(f))
            })
    };
    // Under load the whole answer can take long: once a few tokens are on screen, `Esc` cancels
    // the rest (the pane's cancel key), and the title must say so.
    let title_tokens = |s: &str| -> u32 {
        s.lines()
            .find(|l| l.contains(&format!("Prompt → {id} on local")))
            .and_then(|t| {
                t.split(" · ")
                    .find_map(|seg| seg.trim().strip_suffix(" tok"))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    let screen = tmux.wait_screen(Duration::from_secs(60), "tokens to stream", |s| {
        finished(s) || title_tokens(s) >= 8
    });
    let screen = if finished(&screen) {
        screen
    } else {
        tmux.keys(&["Escape"]);
        tmux.wait_screen(
            Duration::from_secs(20),
            "the cancelled generation to stop",
            |s| {
                finished(s)
                    || s.lines()
                        .any(|l| l.contains("Prompt →") && l.contains("cancelled"))
            },
        )
    };
    assert!(!screen.contains("error:"), "{screen}");
    let title = screen.lines().find(|l| l.contains("Prompt →")).unwrap();
    // "… TTFT 110 ms · 30.7 tok/s · 128 tok · length ╮": the segment that ends in " tok".
    let tokens: u32 = title
        .split(" · ")
        .find_map(|seg| seg.trim().strip_suffix(" tok"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {title:?}"));
    assert!(tokens > 0, "{title}");
    assert!(title.contains("TTFT "), "{title}");
    // The answer sits between the echoed prompt and the input line.
    let lines: Vec<&str> = screen.lines().collect();
    let asked = lines
        .iter()
        .position(|l| l.contains(&format!("› {prompt}")))
        .unwrap_or_else(|| panic!("prompt not echoed:\n{screen}"));
    let answer: String = lines[asked + 1..]
        .iter()
        .take_while(|l| !l.starts_with("│>") && !l.starts_with('╰'))
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !answer.trim().is_empty(),
        "no generated text on screen:\n{screen}"
    );
    step(&format!("generated {tokens} tokens: {:?}", answer.trim()));
}

/// Close the pane, then kill the worker through the confirm popup; its process ends.
fn kill_from_the_confirm_popup(tmux: &Tmux, id: &str, worker_pid: u32, step: &dyn Fn(&str)) {
    tmux.keys(&["Escape"]);
    tmux.wait_screen(Duration::from_secs(5), "the prompt pane to close", |s| {
        !s.contains("Prompt →")
    });
    tmux.keys(&["x"]);
    let screen = tmux.wait_screen(Duration::from_secs(5), "the kill confirmation", |s| {
        s.contains("Kill?")
    });
    assert!(screen.contains(&format!("Kill worker {id}")), "{screen}");
    tmux.keys(&["y"]);
    tmux.wait_screen(Duration::from_secs(20), "the worker row to go", |s| {
        s.contains("Workers (0)") && worker_row(s, id).is_none_or(|r| r.contains("exited"))
    });
    wait_for(
        Duration::from_secs(20),
        "the killed worker's process to end",
        || (!alive(worker_pid)).then_some(()),
    );
    step(&format!("{id} killed"));
}

/// A frozen agent (SIGSTOP: its sockets stay open, nothing answers) is noticed by the silence
/// alone, the session says so and redials, and it comes back once the agent runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_noticed_and_rejoined_when_it_thaws() {
    use rbee_proto::config::NodeConfig;
    use rbee_tui::dashboard::action::Action;
    use rbee_tui::dashboard::node_session::{run_node, SILENT_LIMIT};
    use rbee_tui::nodes::config::NodeTarget;
    use tokio::sync::mpsc;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent-state");
    let agent = AgentProc::start(&state, &[]);
    let target = NodeTarget::Remote(NodeConfig {
        name: "frozen".into(),
        url: agent.url.clone(),
        token_file: state.join("token"),
        ..Default::default()
    });
    let (atx, mut arx) = mpsc::channel(4096);
    let (_etx, erx) = mpsc::channel(16);
    let task = tokio::spawn(run_node(0, target, atx, erx));
    let connected = |a: &Action| matches!(a, Action::Connected { .. }).then_some(());
    common::next_action(
        &mut arx,
        Duration::from_secs(20),
        "the first connection",
        connected,
    )
    .await;
    // Fully serving (subscribed, pinging) before the freeze.
    common::next_action(
        &mut arx,
        Duration::from_secs(20),
        "a latency measurement",
        |a| matches!(a, Action::Latency { .. }).then_some(()),
    )
    .await;

    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let frozen_at = Instant::now();
    let reason = common::next_action(
        &mut arx,
        SILENT_LIMIT + Duration::from_secs(10),
        "the session to notice",
        |a| match a {
            Action::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        },
    )
    .await;
    let noticed = frozen_at.elapsed();
    assert!(reason.contains("no answer from the agent"), "{reason}");
    assert!(
        noticed >= SILENT_LIMIT - Duration::from_secs(3),
        "dropped after {noticed:?}, before the limit: {reason}"
    );

    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    common::next_action(
        &mut arx,
        Duration::from_secs(60),
        "the session to come back",
        connected,
    )
    .await;
    assert!(alive(agent.pid()));
    task.abort();
}
