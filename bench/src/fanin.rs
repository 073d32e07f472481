//! The dashboard side of the fan-in benchmark: the real `rbee-tui` pieces — one
//! `session::run_node` task per node, `update::update`, `view::render`, `app::route` — driven by
//! a loop that copies `app::event_loop` minus the parts that need a terminal (key stream,
//! SIGTERM/SIGHUP), drawing into any ratatui backend (headless in the benchmark).
//!
//! Render policy is the dashboard's: a frame tick every `app::FRAME` (33 ms, missed ticks
//! skipped), a draw only when `state.dirty`, a clock `Action::Tick` every `app::CLOCK`; the
//! `select!` is the same (random branch order), the queues have the same bounds.
//!
//! After `warmup`, for `measure`: CPU time of this whole process (`getrusage`, every thread), the
//! time spent in each `terminal.draw`, the actions applied by kind, how far behind the loop runs
//! (telemetry age on arrival, queued actions at each frame tick).
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::Backend;
use ratatui::buffer::Buffer;
use ratatui::Terminal;
use rbee_proto::now_millis;
use rbee_proto::session::Event;
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::runtime::{route, ACTION_QUEUE, CLOCK, EFFECT_QUEUE, FRAME};
use rbee_tui::dashboard::state::{Conn, NodeState, Screen, State};
use rbee_tui::dashboard::update::update;
use rbee_tui::nodes::config::NodeTarget;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::measure::CpuTime;

/// Which screen the dashboard shows while measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScreenChoice {
    /// The start screen: every node in a table, the selected node's gauges below.
    Nodes,
    /// The first node: gauges, sparklines, its workers table.
    Node,
    /// The first node's first worker (refetches its log every 2 s).
    Worker,
    /// The events list.
    Events,
}

#[derive(Debug, Clone)]
pub struct DashOptions {
    pub warmup: Duration,
    pub measure: Duration,
    pub screen: ScreenChoice,
    /// Keep a prompt streaming on the first node through the prompt pane (real keys: `p`, text,
    /// Enter), sent again each time one finishes.
    pub prompt: bool,
}

/// What one measured run saw.
#[derive(Debug, Clone, Default)]
pub struct DashReport {
    pub nodes: usize,
    pub connected_at_start: usize,
    pub connected_at_end: usize,
    pub workers_at_end: usize,
    /// Wall time of the measured window.
    pub wall: Duration,
    /// CPU time of this process during the window.
    pub cpu: CpuTime,
    /// Time inside each `terminal.draw`, sorted.
    pub frames: Vec<Duration>,
    /// Every action applied through `update`.
    pub actions: u64,
    pub heartbeats: u64,
    pub telemetry: u64,
    pub worker_states: u64,
    pub other_events: u64,
    pub replies: u64,
    pub prompt_tokens: u64,
    pub prompts_done: u64,
    /// Telemetry's age when `update` applied it (`now - telemetry.at`), ms, sorted.
    pub telemetry_lag_ms: Vec<u64>,
    /// Actions waiting in the queue at each frame tick: the largest seen.
    pub max_backlog: usize,
    /// The last frame, as text.
    pub screen: String,
}

impl DashReport {
    pub fn agent_events(&self) -> u64 {
        self.heartbeats + self.telemetry + self.worker_states + self.other_events
    }

    pub fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU time over wall time, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu.total().as_secs_f64() / self.wall.as_secs_f64().max(1e-9) * 100.0
    }
}

fn key(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

/// Run the dashboard over `targets` into `terminal` for `warmup + measure`, and report.
pub async fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    targets: Vec<NodeTarget>,
    opts: &DashOptions,
) -> Result<DashReport, B::Error> {
    let nodes = targets
        .iter()
        .map(|t| NodeState::new(t.name(), t.display_url()))
        .collect();
    let mut state = State::new(nodes);
    state.now = now_millis();

    let (action_tx, mut action_rx) = mpsc::channel::<Action>(ACTION_QUEUE);
    let mut sessions = JoinSet::new();
    let mut effect_txs = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
        effect_txs.push(etx);
        sessions.spawn(rbee_tui::nodes::session::run_node(
            i,
            target,
            action_tx.clone(),
            erx,
        ));
    }
    drop(action_tx);

    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut clock = tokio::time::interval(CLOCK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let dispatch = |state: &mut State, action: Action| {
        state.now = now_millis();
        for effect in update(state, action) {
            route(state, &effect_txs, effect);
        }
    };

    let mut report = DashReport {
        nodes: state.nodes.len(),
        ..DashReport::default()
    };
    let phase = tokio::time::sleep(opts.warmup);
    tokio::pin!(phase);
    let mut measuring = false;
    let (mut t0, mut cpu0) = (Instant::now(), CpuTime::of_self());
    let mut screen_set = opts.screen == ScreenChoice::Nodes;

    loop {
        tokio::select! {
            Some(first) = action_rx.recv() => {
                // As the dashboard's loop: what is already queued is taken in the same turn.
                let mut next = Some(first);
                for _ in 0..rbee_tui::nodes::session::DRAIN {
                    let Some(action) = next.take() else { break };
                    let prompt_done = matches!(action, Action::PromptDone { .. });
                    if measuring {
                        count(&mut report, &action);
                    }
                    dispatch(&mut state, action);
                    if prompt_done && opts.prompt {
                        prompt_again(&mut state, &dispatch);
                    }
                    next = action_rx.try_recv().ok();
                }
            }
            _ = clock.tick() => {
                dispatch(&mut state, Action::Tick);
                if measuring {
                    report.actions += 1;
                }
                if !screen_set {
                    screen_set = open_screen(&mut state, opts.screen, &dispatch);
                }
                if opts.prompt {
                    prompt_again(&mut state, &dispatch);
                }
            }
            _ = frame.tick() => {
                if measuring {
                    report.max_backlog = report.max_backlog.max(action_rx.len());
                }
                if state.dirty {
                    let t = Instant::now();
                    terminal.draw(|f| rbee_tui::dashboard::view::render(&state, f))?;
                    let dt = t.elapsed();
                    if measuring {
                        report.frames.push(dt);
                    }
                    state.dirty = false;
                }
            }
            _ = &mut phase => {
                if measuring {
                    break;
                }
                measuring = true;
                report.connected_at_start = connected(&state);
                phase.as_mut().reset(tokio::time::Instant::now() + opts.measure);
                t0 = Instant::now();
                cpu0 = CpuTime::of_self();
            }
        }
    }
    report.wall = t0.elapsed();
    report.cpu = CpuTime::of_self().since(&cpu0);
    report.frames.sort();
    report.telemetry_lag_ms.sort();
    report.connected_at_end = connected(&state);
    report.workers_at_end = state.nodes.iter().map(|n| n.workers.len()).sum();
    let done = terminal.draw(|f| rbee_tui::dashboard::view::render(&state, f))?;
    report.screen = buffer_text(done.buffer);
    drop(sessions);
    Ok(report)
}

fn connected(state: &State) -> usize {
    state
        .nodes
        .iter()
        .filter(|n| n.conn == Conn::Connected)
        .count()
}

fn count(r: &mut DashReport, action: &Action) {
    r.actions += 1;
    match action {
        Action::AgentEvent { event, .. } => match event {
            Event::Heartbeat { .. } => r.heartbeats += 1,
            Event::Telemetry { telemetry } => {
                r.telemetry += 1;
                r.telemetry_lag_ms
                    .push(now_millis().saturating_sub(telemetry.at));
            }
            Event::WorkerState { .. } => r.worker_states += 1,
            _ => r.other_events += 1,
        },
        Action::Reply { .. } => r.replies += 1,
        Action::PromptToken { .. } => r.prompt_tokens += 1,
        Action::PromptDone { .. } => r.prompts_done += 1,
        _ => {}
    }
}

/// Go to the chosen screen with the keys an operator would press, once node 0 knows its
/// workers. Returns whether it is there.
fn open_screen(
    state: &mut State,
    screen: ScreenChoice,
    dispatch: &impl Fn(&mut State, Action),
) -> bool {
    if state.nodes.first().is_none_or(|n| n.workers.is_empty()) {
        return false;
    }
    match screen {
        ScreenChoice::Nodes => {}
        ScreenChoice::Node => dispatch(state, key(KeyCode::Enter)),
        ScreenChoice::Worker => {
            dispatch(state, key(KeyCode::Enter));
            dispatch(state, key(KeyCode::Enter));
        }
        ScreenChoice::Events => dispatch(state, key(KeyCode::Tab)),
    }
    let there = match screen {
        ScreenChoice::Nodes => matches!(state.screen, Screen::Nodes),
        ScreenChoice::Node => matches!(state.screen, Screen::Node(_)),
        ScreenChoice::Worker => matches!(state.screen, Screen::Worker(..)),
        ScreenChoice::Events => matches!(state.screen, Screen::Events),
    };
    there
}

/// If no prompt is streaming, start one on the current node: `p` (opens the pane on "any ready
/// worker" of the node), the text, Enter.
fn prompt_again(state: &mut State, dispatch: &impl Fn(&mut State, Action)) {
    let serving = state.nodes.get(state.current_node()).is_some_and(|n| {
        n.conn == Conn::Connected && n.workers.iter().any(|w| w.info.state.is_serving())
    });
    if !serving {
        return;
    }
    if state
        .prompt
        .as_ref()
        .and_then(|p| p.run.as_ref())
        .is_some_and(|r| r.active)
    {
        return;
    }
    if !state.prompt.as_ref().is_some_and(|p| p.focused) {
        dispatch(state, key(KeyCode::Char('p')));
        if !state.prompt.as_ref().is_some_and(|p| p.focused) {
            return;
        }
    }
    for c in "Tell me about bees".chars() {
        dispatch(state, key(KeyCode::Char(c)));
    }
    dispatch(state, key(KeyCode::Enter));
}

/// A buffer's symbols, one line per row, trailing spaces trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{LoadConfig, LoadGen};
    use rbee_proto::config::NodeConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dashboard_follows_the_generator() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0k\n").unwrap();
        let cfg = LoadConfig {
            agents: 3,
            workers: 4,
            tokens_per_s: 20.0,
            telemetry_hz: 2.0,
            state_change_every: Duration::from_millis(300),
            gpus: 2,
            token: "t0k".into(),
        };
        let lg = LoadGen::start(cfg).await.unwrap();
        let targets = lg
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                NodeTarget::Remote(NodeConfig {
                    name: format!("n{i}"),
                    url: url.clone(),
                    token_file: token_file.clone(),
                    ..Default::default()
                })
            })
            .collect();
        let mut terminal = Terminal::new(ratatui::backend::TestBackend::new(160, 40)).unwrap();
        let opts = DashOptions {
            warmup: Duration::from_millis(1200),
            measure: Duration::from_millis(1500),
            screen: ScreenChoice::Nodes,
            prompt: true,
        };
        let r = run(&mut terminal, targets, &opts).await.unwrap();
        assert_eq!(r.connected_at_start, 3, "{}", r.screen);
        assert_eq!(r.workers_at_end, 12);
        // 1.5 s × 3 agents × 4 workers × 20 Hz = 360 heartbeats.
        assert!((250..=450).contains(&r.heartbeats), "{r:?}");
        assert!(r.telemetry >= 6, "{r:?}");
        assert!(r.prompt_tokens > 5, "{r:?}");
        assert!(!r.frames.is_empty());
        assert!(r.screen.contains("Nodes (3)"), "{}", r.screen);
        assert!(
            r.screen.contains("gpu-node-000") || r.screen.contains("n0"),
            "{}",
            r.screen
        );
    }
}
