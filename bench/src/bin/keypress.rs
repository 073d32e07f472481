//! `keypress`: keypress-to-first-token as the operator sees it, on the real small model.
//!
//! The dashboard's real pieces run headless (`session::run_node` on the first-run `Local` target,
//! so the dashboard starts its own `rbee-agent`, `update::update`, `view::render` into a
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
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rbee_proto::now_millis;
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::runtime::{route, ACTION_QUEUE, CLOCK, EFFECT_QUEUE, FRAME};
use rbee_tui::dashboard::state::{Conn, NodeState, Popup, Screen, State};
use rbee_tui::dashboard::update::update;
use rbee_tui::nodes::config::NodeTarget;
use tokio::sync::mpsc;

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

fn key(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
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

struct Driver {
    args: Args,
    step: Step,
    res: Results,
    /// Warm-up prompt done (the first prompt on a fresh worker is not counted).
    warmed: bool,
}

impl Driver {
    fn serving(state: &State) -> bool {
        state.nodes[0]
            .workers
            .iter()
            .any(|w| w.info.state.is_serving())
    }

    fn send_prompt(&self, state: &mut State, dispatch: &mut impl FnMut(&mut State, Action)) {
        if !state.prompt.as_ref().is_some_and(|p| p.focused) {
            dispatch(state, key(KeyCode::Char('p')));
        }
        for c in self.args.prompt.chars() {
            dispatch(state, key(KeyCode::Char(c)));
        }
        dispatch(state, key(KeyCode::Enter));
    }

    /// Called after every frame; returns true when done.
    fn after_frame(
        &mut self,
        state: &mut State,
        dispatch: &mut impl FnMut(&mut State, Action),
    ) -> anyhow::Result<bool> {
        let node = &state.nodes[0];
        if let Conn::Unreachable { reason, .. } = &node.conn {
            bail!("local agent unreachable: {reason}");
        }
        match self.step {
            Step::Connect => {
                if node.conn != Conn::Connected || node.models.is_empty() {
                    return Ok(false);
                }
                dispatch(state, key(KeyCode::Enter)); // open the node
                if !matches!(state.screen, Screen::Node(0)) {
                    bail!("Enter did not open the node");
                }
                self.start_cold(state, dispatch)?;
            }
            Step::Spawning(t0) => {
                if let Some(w) = node
                    .workers
                    .iter()
                    .find(|w| w.info.state == rbee_proto::WorkerState::Failed)
                {
                    bail!("worker failed: {:?}", w.info.last_exit);
                }
                if Self::serving(state) {
                    self.res
                        .spawn_ready_ms
                        .push(t0.elapsed().as_secs_f64() * 1e3);
                    // Select it, then prompt at once.
                    dispatch(state, key(KeyCode::Down));
                    let sent = Instant::now();
                    self.send_prompt(state, dispatch);
                    self.step = Step::Prompted {
                        sent,
                        cold: Some(t0),
                    };
                }
            }
            Step::Prompted { sent, cold } => {
                let run = state.prompt.as_ref().and_then(|p| p.run.as_ref());
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
                    dispatch(state, key(KeyCode::Esc)); // cancel the rest of the answer
                    self.step = Step::Finishing;
                }
            }
            Step::Finishing => {
                if state
                    .prompt
                    .as_ref()
                    .and_then(|p| p.run.as_ref())
                    .is_some_and(|r| r.active)
                {
                    return Ok(false);
                }
                dispatch(state, key(KeyCode::Esc)); // close the pane
                if self.res.warm_ms.len() >= self.args.runs {
                    if self.res.cold_ms.len() >= self.args.cold_runs {
                        return Ok(true);
                    }
                    // Kill the worker from the table (confirm with y), then spawn cold again.
                    dispatch(state, key(KeyCode::Char('x')));
                    dispatch(state, key(KeyCode::Char('y')));
                    self.step = Step::Killing;
                } else {
                    let sent = Instant::now();
                    self.send_prompt(state, dispatch);
                    self.step = Step::Prompted { sent, cold: None };
                }
            }
            Step::Killing => {
                if node.workers.is_empty() {
                    self.start_cold(state, dispatch)?;
                }
            }
        }
        Ok(false)
    }

    fn start_cold(
        &mut self,
        state: &mut State,
        dispatch: &mut impl FnMut(&mut State, Action),
    ) -> anyhow::Result<()> {
        dispatch(state, key(KeyCode::Char('s')));
        if !matches!(state.popup, Some(Popup::Spawn(_))) {
            bail!("`s` did not open the spawn dialog");
        }
        let t0 = Instant::now();
        dispatch(state, key(KeyCode::Enter));
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
    let mut state = State::new(vec![NodeState::new("local", "local agent")]);
    state.now = now_millis();
    let (action_tx, mut action_rx) = mpsc::channel::<Action>(ACTION_QUEUE);
    let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
    let effect_txs = vec![etx];
    let session = tokio::spawn(rbee_tui::nodes::session::run_node(
        0,
        NodeTarget::Local,
        action_tx,
        erx,
    ));
    let mut terminal = Terminal::new(TestBackend::new(120, 40))?;
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut clock = tokio::time::interval(CLOCK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dispatch = |state: &mut State, action: Action| {
        state.now = now_millis();
        for effect in update(state, action) {
            route(state, &effect_txs, effect);
        }
    };
    let mut driver = Driver {
        args,
        step: Step::Connect,
        res: Results::default(),
        warmed: false,
    };
    let limit = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            Some(action) = action_rx.recv() => dispatch(&mut state, action),
            _ = clock.tick() => dispatch(&mut state, Action::Tick),
            _ = frame.tick() => {
                if state.dirty {
                    terminal.draw(|f| rbee_tui::dashboard::view::render(&state, f))?;
                    state.dirty = false;
                }
                // After the draw: a token seen here is on the screen.
                if driver.after_frame(&mut state, &mut dispatch)? {
                    break;
                }
            }
            _ = &mut limit => bail!("gave up after 600 s at step {:?}", driver.step),
        }
    }
    session.abort();
    Ok(driver.res)
}
