//! The dashboard's one event loop, whoever drives it: the terminal app ([`crate::dashboard::app`]),
//! the fan-in and keypress benchmarks, tests. One `select!` over the actions the node sessions
//! send, the outside input (keys, or a benchmark's script), a clock tick, a frame tick, the nodes
//! `:add` brings up, and the session tasks themselves. Every action goes through `update`; every
//! effect leaves through [`Runtime::dispatch`]; every frame is `view::render`.
//!
//! Render policy: a frame tick every [`FRAME`] (missed ticks skipped), a draw only when the state
//! is dirty; an `Action::Tick` every [`CLOCK`]. Actions already queued are taken in the same turn,
//! up to `session::DRAIN`.
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::backend::Backend;
use ratatui::Terminal;
use rbee_proto::config::NodeConfig;
use rbee_proto::now_millis;
use tokio::sync::mpsc;
use tokio::task::{self, JoinSet};

use crate::dashboard::action::{Action, Effect};
use crate::dashboard::board::RequestBoard;
use crate::dashboard::node_session::{run_node, DRAIN};
use crate::dashboard::state::{EventKind, NodeIdx, NodeState, State};
use crate::dashboard::update::update;
use crate::dashboard::view;
use crate::nodes::add::{add_ssh_node, unknown_host_key};
use crate::nodes::config::{AddNodeRequest, ConfigFile, NodeTarget};
use crate::nodes::connect::CONNECT_TIMEOUT;
use crate::nodes::error::TuiError;

/// Shortest time between two frames (about 30 fps).
pub const FRAME: Duration = Duration::from_millis(33);
/// Clock tick: heartbeat ages and "down for" counters move once a second.
pub const CLOCK: Duration = Duration::from_secs(1);
/// Actions queued from all sessions before they wait for the dashboard.
pub const ACTION_QUEUE: usize = 4096;
/// Effects queued per node before the dashboard reports the node as saturated.
pub const EFFECT_QUEUE: usize = 256;

/// What comes from outside the sessions.
#[derive(Debug)]
pub enum Input {
    /// Apply this (a key, a resize).
    Action(Box<Action>),
    /// Nothing to apply (an event the dashboard ignores, a driver's own timer).
    Nothing,
    /// Leave the loop (the terminal closed, SIGTERM, a benchmark's time is up).
    Stop,
    /// Leave the loop with this error.
    Failed(TuiError),
}

/// Whoever runs the loop: where its input comes from, and what it does around the loop's steps.
/// Every hook but [`Driver::input`] has a default that does nothing.
pub trait Driver {
    /// The next outside input. Must be cancel-safe: the loop drops it whenever something else is
    /// ready first.
    fn input(&mut self) -> impl Future<Output = Input>;

    /// A session's action is about to be applied.
    fn before_action(&mut self, _action: &Action) {}

    /// A session's action was applied (the driver may dispatch more through `rt`).
    fn after_action(&mut self, _rt: &mut Runtime) {}

    /// The clock ticked and `Action::Tick` was applied.
    fn after_clock(&mut self, _rt: &mut Runtime) {}

    /// A frame tick, before the draw (the driver may look at the backlog).
    fn before_frame(&mut self, _rt: &Runtime) {}

    /// A frame tick is done; `drawn` says how long the draw took when there was one.
    fn after_frame(&mut self, _rt: &mut Runtime, _drawn: Option<Duration>) {}
}

/// What an `:add` bring-up came back with.
type Added = Result<NodeConfig, String>;

/// The dashboard's state and everything wired to it: one session task per node, their queues,
/// the `:add`s under way.
pub struct Runtime {
    /// What `update` changes and `view` draws.
    pub state: State,
    actions: mpsc::Sender<Action>,
    inbox: mpsc::Receiver<Action>,
    /// Dropping the set aborts every session task.
    sessions: JoinSet<()>,
    task_node: HashMap<task::Id, NodeIdx>,
    effects: Vec<mpsc::Sender<Effect>>,
    added_tx: mpsc::Sender<Added>,
    added_rx: mpsc::Receiver<Added>,
    /// Where `:add` records nodes (a headless run may have nowhere).
    config: Option<PathBuf>,
    /// Nodes added from the dashboard with `--ephemeral`.
    ephemeral: Vec<NodeConfig>,
    /// The request board of the gateway running beside the dashboard (`--serve`).
    board: Option<RequestBoard>,
    stop: bool,
}

impl Runtime {
    /// Start one session per target. `config` is the file `:add` records nodes in (without one,
    /// `:add` is refused). Must be called inside a tokio runtime.
    pub fn start(targets: Vec<NodeTarget>, config: Option<PathBuf>) -> Self {
        let nodes = targets
            .iter()
            .map(|t| NodeState::new(t.name(), t.display_url()))
            .collect();
        let mut state = State::new(nodes);
        state.now = now_millis();
        let (actions, inbox) = mpsc::channel(ACTION_QUEUE);
        let (added_tx, added_rx) = mpsc::channel(4);
        let mut rt = Self {
            state,
            actions,
            inbox,
            sessions: JoinSet::new(),
            task_node: HashMap::new(),
            effects: Vec::with_capacity(targets.len()),
            added_tx,
            added_rx,
            config,
            ephemeral: Vec::new(),
            board: None,
            stop: false,
        };
        for (i, target) in targets.into_iter().enumerate() {
            rt.follow(i, target);
        }
        rt
    }

    /// Start node `i`'s session task.
    fn follow(&mut self, i: NodeIdx, target: NodeTarget) {
        let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
        self.effects.push(etx);
        let handle = self
            .sessions
            .spawn(run_node(i, target, self.actions.clone(), erx));
        self.task_node.insert(handle.id(), i);
    }

    /// Apply one action at the current time and carry out its effects.
    pub fn dispatch(&mut self, action: Action) {
        self.state.now = now_millis();
        for effect in update(&mut self.state, action) {
            match effect {
                Effect::AddNode(req) => self.add_node(req),
                effect => route(&mut self.state, &self.effects, effect),
            }
        }
    }

    /// Show the requests of the gateway listening on `addr` (snapshot on every clock tick).
    pub fn show_gateway(&mut self, addr: String, board: RequestBoard) {
        self.state.serving = Some(addr);
        self.state.requests = board.snapshot();
        self.board = Some(board);
    }

    /// Actions waiting to be applied.
    pub fn backlog(&self) -> usize {
        self.inbox.len()
    }

    /// Leave the loop after the current step.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// SSH nodes added from the dashboard with `--ephemeral` (their agents stop when it quits).
    pub fn ephemeral(&self) -> &[NodeConfig] {
        &self.ephemeral
    }

    /// Bring an SSH node up in the background and record it; it reports back through `added`,
    /// or as `Action::HostKeyUnknown` when its host key needs the operator's word.
    fn add_node(&mut self, req: AddNodeRequest) {
        let Some(config) = self.config.clone() else {
            let name = &req.node.name;
            let text = format!("adding {name} failed: no config file to record it in");
            self.state.flash_error(text);
            return;
        };
        let (added, actions) = (self.added_tx.clone(), self.actions.clone());
        tokio::spawn(async move {
            let name = req.node.name.clone();
            let result = match ConfigFile::load(&config) {
                Ok(mut cf) => add_ssh_node(&mut cf, &req, CONNECT_TIMEOUT).await,
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(_) => {
                    let _ = added.send(Ok(req.node)).await;
                    return;
                }
                Err(e) => e,
            };
            if let Some((host, key)) = unknown_host_key(&e) {
                // A key nobody trusted yet: ask the operator, showing its fingerprint.
                let _ = actions
                    .send(Action::HostKeyUnknown { req, host, key })
                    .await;
                return;
            }
            let _ = added.send(Err(format!("adding {name} failed: {e}"))).await;
        });
    }

    /// A node `:add` brought up: follow it from now on.
    fn added(&mut self, added: Added) {
        match added {
            Ok(node) => {
                let i = self.state.nodes.len();
                let target = NodeTarget::Remote(node.clone());
                self.state
                    .nodes
                    .push(NodeState::new(target.name(), target.display_url()));
                self.follow(i, target);
                if node.ephemeral {
                    self.ephemeral.push(node.clone());
                }
                let ssh = node.ssh.as_deref().unwrap_or("");
                self.state
                    .flash(format!("added node {} (ssh://{ssh})", node.name));
            }
            Err(e) => self.state.flash_error(e),
        }
        self.state.dirty = true;
    }

    /// A session task ended on its own, which only a panic does: say so rather than go quiet.
    fn session_ended(&mut self, id: task::Id, why: String) {
        if let Some(&n) = self.task_node.get(&id) {
            let name = self.state.nodes[n].name.clone();
            let text = format!("session task {why}; restart the dashboard (see the log)");
            self.state.push_event(&name, EventKind::Error, text);
            self.state.dirty = true;
        }
    }

    /// Apply the session actions that are waiting, `first` included, up to `DRAIN` of them.
    fn drain<D: Driver>(&mut self, first: Action, driver: &mut D) {
        let mut next = Some(first);
        for _ in 0..DRAIN {
            let Some(action) = next.take() else { break };
            driver.before_action(&action);
            self.dispatch(action);
            driver.after_action(self);
            next = self.inbox.try_recv().ok();
        }
    }

    /// Run until the operator quits, the driver stops, or [`Runtime::stop`] is called; draw into
    /// `terminal`.
    pub async fn run<B, D>(
        &mut self,
        terminal: &mut Terminal<B>,
        driver: &mut D,
    ) -> Result<(), TuiError>
    where
        B: Backend,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        D: Driver,
    {
        let mut frame = tokio::time::interval(FRAME);
        frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut clock = tokio::time::interval(CLOCK);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.state.should_quit && !self.stop {
            tokio::select! {
                input = driver.input() => match input {
                    Input::Action(action) => self.dispatch(*action),
                    Input::Nothing => {}
                    Input::Stop => break,
                    Input::Failed(e) => return Err(e),
                },
                Some(action) = self.inbox.recv() => self.drain(action, driver),
                Some(added) = self.added_rx.recv() => self.added(added),
                _ = clock.tick() => {
                    self.dispatch(Action::Tick);
                    if let Some(board) = &self.board {
                        let rows = board.snapshot();
                        self.dispatch(Action::Requests(rows));
                    }
                    driver.after_clock(self);
                }
                _ = frame.tick() => {
                    driver.before_frame(self);
                    let drawn = self.draw(terminal)?;
                    driver.after_frame(self, drawn);
                }
                Some(res) = self.sessions.join_next_with_id(), if !self.sessions.is_empty() => {
                    let (id, why) = match res {
                        Ok((id, ())) => (id, "stopped".to_string()),
                        Err(e) => (e.id(), e.to_string()),
                    };
                    self.session_ended(id, why);
                }
            }
        }
        Ok(())
    }

    /// Draw when something changed; how long it took.
    pub fn draw<B>(&mut self, terminal: &mut Terminal<B>) -> Result<Option<Duration>, TuiError>
    where
        B: Backend,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !self.state.dirty {
            return Ok(None);
        }
        let t = Instant::now();
        terminal
            .draw(|f| view::render(&self.state, f))
            .map_err(|e| TuiError::Terminal(io_error(e.into())))?;
        self.state.dirty = false;
        Ok(Some(t.elapsed()))
    }
}

/// A backend's error as the `io::Error` the terminal reports (it already is one for a real
/// terminal).
fn io_error(e: Box<dyn std::error::Error + Send + Sync>) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(io) => *io,
        Err(other) => std::io::Error::other(other),
    }
}

/// Hand an effect to its node's session without ever blocking the UI; a full or closed queue is
/// said in the status line.
pub fn route(state: &mut State, effect_txs: &[mpsc::Sender<Effect>], effect: Effect) {
    let Some(node) = effect.node() else {
        return;
    };
    let Some(tx) = effect_txs.get(node) else {
        return;
    };
    if let Err(e) = tx.try_send(effect) {
        let name = state.nodes[node].name.clone();
        let why = match e {
            mpsc::error::TrySendError::Full(_) => "too many requests queued",
            mpsc::error::TrySendError::Closed(_) => "its session task has stopped",
        };
        state.flash_error(format!("{name}: request not sent: {why}"));
    }
}
