//! `keypress`: keypress-to-first-token as the operator sees it, on the real small model.
//!
//! The dashboard's own event loop runs headless (`rbee_tui::dashboard::runtime::Runtime` over the
//! first-run `Local` target, so the dashboard starts its own `rbee-agent`; `view::render` into a
//! `TestBackend`, frames on the dashboard's 33 ms tick when something changed). Keys go in as the
//! dashboard receives them. A time is taken when the key is applied and stops at the first frame
//! drawn with a token of the answer on it.
//!
//! * warm: a ready worker; `p`, the prompt typed, `Enter` (clock starts) → first token drawn.
//! * cold: no worker; `s`, `Enter` in the spawn dialog (clock starts) → the worker turns ready →
//!   `p`, prompt, `Enter` at once → first token drawn. Spawn-to-ready is reported on its own too.
//!
//! Prints a markdown table.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use crossterm::event::KeyCode;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rbee_tui::dashboard::runtime::{Driver, Input, Runtime};
use rbee_tui::dashboard::state::{Conn, Popup, Screen, State};
use rbee_tui::dashboard::update::key;
use rbee_tui::nodes::config::NodeTarget;

#[derive(Parser, Debug)]
#[command(about = "Keypress-to-first-token through the headless dashboard on the real small model")]
struct Args {
    /// Warm measurements.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Cold measurements (spawn + prompt); each kills the worker first.
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
    /// Model directory for the local agent.
    #[arg(long, default_value = "assets/models")]
    model_dir: PathBuf,
    /// The `rbee-agent` to start (default: beside this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    #[arg(long, default_value = "Tell me about bees")]
    prompt: String,
}

/// What the driver waits for next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Connect,
    /// Cold: spawn dialog submitted at the instant; waiting for a serving worker.
    Spawning(Instant),
    /// Prompt sent; `Some(cold start)` when this is the prompt of a cold run.
    Prompted {
        sent: Instant,
        cold: Option<Instant>,
    },
    /// Waiting for the prompt to finish (cancelled after the first token).
    Finishing,
    /// Waiting for the killed worker to go.
    Killing,
}

#[derive(Default)]
struct Results {
    warm_ms: Vec<f64>,
    cold_ms: Vec<f64>,
    spawn_ready_ms: Vec<f64>,
}

struct Keypress {
    args: Args,
    step: Step,
    res: Results,
    /// Warm-up prompt done (the first prompt on a fresh worker is not counted).
    warmed: bool,
    /// Gives up after 600 s.
    limit: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Why the run stopped early.
    failed: Option<anyhow::Error>,
}

impl Driver for Keypress {
    async fn input(&mut self) -> Input {
        self.limit.as_mut().await;
        self.failed = Some(anyhow::anyhow!(
            "gave up after 600 s at step {:?}",
            self.step
        ));
        Input::Stop
    }

    /// After the draw: a token seen here is on the screen.
    fn after_frame(&mut self, rt: &mut Runtime, _drawn: Option<Duration>) {
        match self.step(rt) {
            Ok(false) => {}
            Ok(true) => rt.stop(),
            Err(e) => {
                self.failed = Some(e);
                rt.stop();
            }
        }
    }
}

impl Keypress {
    fn serving(state: &State) -> bool {
        state.nodes[0]
            .workers
            .iter()
            .any(|w| w.info.state.is_serving())
    }

    fn send_prompt(&self, rt: &mut Runtime) {
        if !rt.state.prompt.as_ref().is_some_and(|p| p.focused) {
            rt.dispatch(key(KeyCode::Char('p')));
        }
        for c in self.args.prompt.chars() {
            rt.dispatch(key(KeyCode::Char(c)));
        }
        rt.dispatch(key(KeyCode::Enter));
    }

    /// Called after every frame; returns true when done.
    fn step(&mut self, rt: &mut Runtime) -> anyhow::Result<bool> {
        let node = &rt.state.nodes[0];
        if let Conn::Unreachable { reason, .. } = &node.conn {
            bail!("local agent unreachable: {reason}");
        }
        match self.step {
            Step::Connect => {
                if node.conn != Conn::Connected || node.models.is_empty() {
                    return Ok(false);
                }
                rt.dispatch(key(KeyCode::Enter)); // open the node
                if !matches!(rt.state.screen, Screen::Node(0)) {
                    bail!("Enter did not open the node");
                }
                self.start_cold(rt)?;
            }
            Step::Spawning(t0) => {
                if let Some(w) = node
                    .workers
                    .iter()
                    .find(|w| w.info.state == rbee_proto::WorkerState::Failed)
                {
                    bail!("worker failed: {:?}", w.info.last_exit);
                }
                if Self::serving(&rt.state) {
                    self.res
                        .spawn_ready_ms
                        .push(t0.elapsed().as_secs_f64() * 1e3);
                    // Select it, then prompt at once.
                    rt.dispatch(key(KeyCode::Down));
                    let sent = Instant::now();
                    self.send_prompt(rt);
                    self.step = Step::Prompted {
                        sent,
                        cold: Some(t0),
                    };
                }
            }
            Step::Prompted { sent, cold } => {
                let run = rt.state.prompt.as_ref().and_then(|p| p.run.as_ref());
                if let Some(e) = run.and_then(|r| r.error.clone()) {
                    bail!("prompt failed: {e}");
                }
                if run.is_some_and(|r| r.first_token_at.is_some()) {
                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                    match cold {
                        Some(t0) => self.res.cold_ms.push(t0.elapsed().as_secs_f64() * 1e3),
                        None if self.warmed => self.res.warm_ms.push(ms),
                        None => {}
                    }
                    self.warmed = true;
                    rt.dispatch(key(KeyCode::Esc)); // cancel the rest of the answer
                    self.step = Step::Finishing;
                }
            }
            Step::Finishing => {
                if rt
                    .state
                    .prompt
                    .as_ref()
                    .and_then(|p| p.run.as_ref())
                    .is_some_and(|r| r.active)
                {
                    return Ok(false);
                }
                rt.dispatch(key(KeyCode::Esc)); // close the pane
                if self.res.warm_ms.len() >= self.args.runs {
                    if self.res.cold_ms.len() >= self.args.cold_runs {
                        return Ok(true);
                    }
                    // Kill the worker from the table (confirm with y), then spawn cold again.
                    rt.dispatch(key(KeyCode::Char('x')));
                    rt.dispatch(key(KeyCode::Char('y')));
                    self.step = Step::Killing;
                } else {
                    let sent = Instant::now();
                    self.send_prompt(rt);
                    self.step = Step::Prompted { sent, cold: None };
                }
            }
            Step::Killing => {
                if node.workers.is_empty() {
                    self.start_cold(rt)?;
                }
            }
        }
        Ok(false)
    }

    fn start_cold(&mut self, rt: &mut Runtime) -> anyhow::Result<()> {
        rt.dispatch(key(KeyCode::Char('s')));
        if !matches!(rt.state.popup, Some(Popup::Spawn(_))) {
            bail!("`s` did not open the spawn dialog");
        }
        let t0 = Instant::now();
        rt.dispatch(key(KeyCode::Enter));
        self.step = Step::Spawning(t0);
        Ok(())
    }
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

/// One thread, as `rbee-tui`'s runtime.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let state_dir = tmp.path().join("local-agent");
    let agent_bin = match &args.agent_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("rbee-agent"),
    };
    let model_dir = std::fs::canonicalize(&args.model_dir)
        .with_context(|| format!("model dir {}", args.model_dir.display()))?;
    // The dashboard's first-run path reads these; they point it at a private agent.
    std::env::set_var("RBEE_LOCAL_STATE", &state_dir);
    std::env::set_var("RBEE_AGENT_BIN", &agent_bin);
    std::env::set_var("RBEE_MODEL_DIR", &model_dir);

    let result = measure(args).await;

    // Stop the agent the dashboard started (its pid is in the lock file).
    if let Some(pid) = std::fs::read_to_string(state_dir.join("agent.lock"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: signalling the agent this run started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            // SAFETY: signal 0 only checks existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let res = result?;
    let (wmin, wmed, wmax) = stats(&res.warm_ms);
    let (cmin, cmed, cmax) = stats(&res.cold_ms);
    let (smin, smed, smax) = stats(&res.spawn_ready_ms);
    println!("| keypress → first token drawn | runs | min ms | median ms | max ms |");
    println!("|---|---|---|---|---|");
    println!(
        "| warm worker (`Enter` on the prompt) | {} | {wmin:.0} | {wmed:.0} | {wmax:.0} |",
        res.warm_ms.len()
    );
    println!(
        "| cold spawn (`Enter` in the spawn dialog) | {} | {cmin:.0} | {cmed:.0} | {cmax:.0} |",
        res.cold_ms.len()
    );
    println!(
        "| of which spawn → ready | {} | {smin:.0} | {smed:.0} | {smax:.0} |",
        res.spawn_ready_ms.len()
    );
    Ok(())
}

async fn measure(args: Args) -> anyhow::Result<Results> {
    let mut rt = Runtime::start(vec![NodeTarget::Local], None);
    let mut terminal = Terminal::new(TestBackend::new(120, 40))?;
    let mut keypress = Keypress {
        args,
        step: Step::Connect,
        res: Results::default(),
        warmed: false,
        limit: Box::pin(tokio::time::sleep(Duration::from_secs(600))),
        failed: None,
    };
    rt.run(&mut terminal, &mut keypress).await?;
    match keypress.failed {
        Some(e) => Err(e),
        None => Ok(keypress.res),
    }
}
