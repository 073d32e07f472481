//! The dashboard side of the fan-in benchmark: the dashboard's own event loop
//! (`rbee_tui::dashboard::runtime::Runtime`: one session task per node, `update`, `view::render`,
//! the same `select!`, queues, frame and clock ticks) driven by a benchmark [`Driver`] instead of
//! the terminal's keys, drawing into any ratatui backend (headless in the benchmark).
//!
//! After `warmup`, for `measure`: CPU time of this whole process (`getrusage`, every thread), the
//! time spent in each `terminal.draw`, the actions applied by kind, how far behind the loop runs
//! (telemetry age on arrival, queued actions at each frame tick).
use std::pin::Pin;
use std::time::{Duration, Instant};

use crossterm::event::KeyCode;
use ratatui::backend::Backend;
use ratatui::buffer::Buffer;
use ratatui::Terminal;
use rbee_proto::now_millis;
use rbee_proto::session::Event;
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::runtime::{Driver, Input, Runtime};
use rbee_tui::dashboard::state::{Conn, Screen, State};
use rbee_tui::dashboard::update::key;
use rbee_tui::dashboard::view;
use rbee_tui::nodes::config::NodeTarget;
use rbee_tui::TuiError;
use tokio::time::Sleep;

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

/// How one run goes.
#[derive(Debug, Clone)]
pub struct DashOptions {
    /// Time to connect and settle before measuring.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// The screen shown while measured.
    pub screen: ScreenChoice,
    /// Keep a prompt streaming on the first node through the prompt pane (real keys: `p`, text,
    /// Enter), sent again each time one finishes.
    pub prompt: bool,
}

/// What one measured run saw.
#[derive(Debug, Clone, Default)]
pub struct DashReport {
    /// Nodes followed.
    pub nodes: usize,
    /// Of those, connected when measuring began.
    pub connected_at_start: usize,
    /// Connected when it ended.
    pub connected_at_end: usize,
    /// Workers the dashboard knew at the end.
    pub workers_at_end: usize,
    /// Wall time of the measured window.
    pub wall: Duration,
    /// CPU time of this process during the window.
    pub cpu: CpuTime,
    /// Time inside each `terminal.draw`, sorted.
    pub frames: Vec<Duration>,
    /// Every action applied through `update`.
    pub actions: u64,
    /// Of those, heartbeat events.
    pub heartbeats: u64,
    /// Telemetry events.
    pub telemetry: u64,
    /// Worker state changes.
    pub worker_states: u64,
    /// Other agent events (audit, logs, pulls).
    pub other_events: u64,
    /// Replies to the dashboard's requests.
    pub replies: u64,
    /// Tokens of the prompt pane's generations.
    pub prompt_tokens: u64,
    /// Generations finished.
    pub prompts_done: u64,
    /// Telemetry's age when `update` applied it (`now - telemetry.at`), ms, sorted.
    pub telemetry_lag_ms: Vec<u64>,
    /// Actions waiting in the queue at each frame tick: the largest seen.
    pub max_backlog: usize,
    /// The last frame, as text.
    pub screen: String,
}

impl DashReport {
    /// Events the agents pushed, all kinds.
    pub fn agent_events(&self) -> u64 {
        self.heartbeats + self.telemetry + self.worker_states + self.other_events
    }

    /// `n` per second of the measured window.
    pub fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU time over wall time, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu.total().as_secs_f64() / self.wall.as_secs_f64().max(1e-9) * 100.0
    }
}

/// The benchmark's side of the loop: the warm-up and measuring phases, the counts, and the keys
/// an operator would press.
struct Bench<'a> {
    opts: &'a DashOptions,
    report: DashReport,
    phase: Pin<Box<Sleep>>,
    measuring: bool,
    /// `connected_at_start` is taken at the first look at the state once measuring.
    start_pending: bool,
    t0: Instant,
    cpu0: CpuTime,
    screen_set: bool,
    /// The action being applied is a `PromptDone`.
    prompt_done: bool,
}

impl Bench<'_> {
    fn look(&mut self, rt: &Runtime) {
        if self.start_pending {
            self.start_pending = false;
            self.report.connected_at_start = connected(&rt.state);
        }
    }
}

impl Driver for Bench<'_> {
    async fn input(&mut self) -> Input {
        self.phase.as_mut().await;
        if self.measuring {
            return Input::Stop;
        }
        self.measuring = true;
        self.start_pending = true;
        let end = tokio::time::Instant::now() + self.opts.measure;
        self.phase.as_mut().reset(end);
        self.t0 = Instant::now();
        self.cpu0 = CpuTime::of_self();
        Input::Nothing
    }

    fn before_action(&mut self, action: &Action) {
        self.prompt_done = matches!(action, Action::PromptDone { .. });
        if self.measuring {
            count(&mut self.report, action);
        }
    }

    fn after_action(&mut self, rt: &mut Runtime) {
        self.look(rt);
        if self.prompt_done && self.opts.prompt {
            prompt_again(rt);
        }
    }

    fn after_clock(&mut self, rt: &mut Runtime) {
        self.look(rt);
        if self.measuring {
            self.report.actions += 1;
        }
        if !self.screen_set {
            self.screen_set = open_screen(rt, self.opts.screen);
        }
        if self.opts.prompt {
            prompt_again(rt);
        }
    }

    fn before_frame(&mut self, rt: &Runtime) {
        self.look(rt);
        if self.measuring {
            self.report.max_backlog = self.report.max_backlog.max(rt.backlog());
        }
    }

    fn after_frame(&mut self, _rt: &mut Runtime, drawn: Option<Duration>) {
        if let (true, Some(dt)) = (self.measuring, drawn) {
            self.report.frames.push(dt);
        }
    }
}

/// Run the dashboard over `targets` into `terminal` for `warmup + measure`, and report.
pub async fn run<B>(
    terminal: &mut Terminal<B>,
    targets: Vec<NodeTarget>,
    opts: &DashOptions,
) -> Result<DashReport, TuiError>
where
    B: Backend,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut rt = Runtime::start(targets, None);
    let mut bench = Bench {
        opts,
        report: DashReport {
            nodes: rt.state.nodes.len(),
            ..DashReport::default()
        },
        phase: Box::pin(tokio::time::sleep(opts.warmup)),
        measuring: false,
        start_pending: false,
        t0: Instant::now(),
        cpu0: CpuTime::of_self(),
        screen_set: opts.screen == ScreenChoice::Nodes,
        prompt_done: false,
    };
    rt.run(terminal, &mut bench).await?;
    let mut report = bench.report;
    report.wall = bench.t0.elapsed();
    report.cpu = CpuTime::of_self().since(&bench.cpu0);
    report.frames.sort();
    report.telemetry_lag_ms.sort();
    report.connected_at_end = connected(&rt.state);
    report.workers_at_end = rt.state.nodes.iter().map(|n| n.workers.len()).sum();
    let done = terminal
        .draw(|f| view::render(&rt.state, f))
        .map_err(|e| TuiError::Terminal(std::io::Error::other(e)))?;
    report.screen = buffer_text(done.buffer);
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
fn open_screen(rt: &mut Runtime, screen: ScreenChoice) -> bool {
    if rt.state.nodes.first().is_none_or(|n| n.workers.is_empty()) {
        return false;
    }
    match screen {
        ScreenChoice::Nodes => {}
        ScreenChoice::Node => rt.dispatch(key(KeyCode::Enter)),
        ScreenChoice::Worker => {
            rt.dispatch(key(KeyCode::Enter));
            rt.dispatch(key(KeyCode::Enter));
        }
        ScreenChoice::Events => rt.dispatch(key(KeyCode::Tab)),
    }
    match screen {
        ScreenChoice::Nodes => matches!(rt.state.screen, Screen::Nodes),
        ScreenChoice::Node => matches!(rt.state.screen, Screen::Node(_)),
        ScreenChoice::Worker => matches!(rt.state.screen, Screen::Worker(..)),
        ScreenChoice::Events => matches!(rt.state.screen, Screen::Events),
    }
}

/// If no prompt is streaming, start one on the current node: `p` (opens the pane on "any ready
/// worker" of the node), the text, Enter.
fn prompt_again(rt: &mut Runtime) {
    let state = &rt.state;
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
    let focused = |rt: &Runtime| rt.state.prompt.as_ref().is_some_and(|p| p.focused);
    if !focused(rt) {
        rt.dispatch(key(KeyCode::Char('p')));
        if !focused(rt) {
            return;
        }
    }
    for c in "Tell me about bees".chars() {
        rt.dispatch(key(KeyCode::Char(c)));
    }
    rt.dispatch(key(KeyCode::Enter));
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
