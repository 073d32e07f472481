//! The dashboard's event loop: one `select!` over the terminal's key stream, the actions from the
//! node sessions, a clock tick and a render tick. It owns the terminal and the session tasks; all
//! decisions are `update`'s and all drawing is `view`'s.
use std::collections::HashMap;
use std::io::Stdout;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures_util::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use rbee_proto::now_millis;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::action::{Action, Effect};
use crate::config::NodeTarget;
use crate::error::TuiError;
use crate::state::{EventKind, NodeState, State};
use crate::update::update;

/// Shortest time between two frames (about 30 fps).
pub const FRAME: Duration = Duration::from_millis(33);
/// Clock tick: heartbeat ages and "down for" counters move once a second.
pub const CLOCK: Duration = Duration::from_secs(1);
/// Actions queued from all sessions before they wait for the dashboard.
pub const ACTION_QUEUE: usize = 4096;
/// Effects queued per node before the dashboard reports the node as saturated.
pub const EFFECT_QUEUE: usize = 256;

/// Puts the terminal back however we leave: return, error or panic unwinding through here.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leave raw mode and the alternate screen. Safe to call twice.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Panics on the UI thread restore the terminal before the message is printed; panics elsewhere
/// (a session task) only go to the log, since printing would scribble over the dashboard.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        if std::thread::current().name() == Some("main") {
            restore_terminal();
            previous(info);
        }
    }));
}

/// Run the dashboard over `targets` until the operator quits; then stop the agents of SSH nodes
/// added as ephemeral (other agents are daemons and keep running).
pub async fn run_dashboard(
    targets: Vec<NodeTarget>,
    config: std::path::PathBuf,
) -> Result<(), TuiError> {
    let mut ephemeral: Vec<_> = targets
        .iter()
        .filter_map(|t| match t {
            NodeTarget::Remote(n) if n.ssh.is_some() && n.ephemeral => Some(n.clone()),
            _ => None,
        })
        .collect();
    let result = dashboard(targets, &config, &mut ephemeral).await;
    if !ephemeral.is_empty() {
        crate::ssh::stop_ephemeral(&ephemeral).await;
    }
    result
}

/// `ephemeral` receives the ephemeral nodes added from the dashboard (`:add … --ephemeral`).
async fn dashboard(
    targets: Vec<NodeTarget>,
    config: &std::path::Path,
    ephemeral: &mut Vec<rbee_proto::config::NodeConfig>,
) -> Result<(), TuiError> {
    install_panic_hook();
    enable_raw_mode().map_err(TuiError::Terminal)?;
    let _guard = TerminalGuard;
    execute!(std::io::stdout(), EnterAlternateScreen).map_err(TuiError::Terminal)?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(TuiError::Terminal)?;
    terminal.clear().map_err(TuiError::Terminal)?;
    let result = event_loop(&mut terminal, targets, config, ephemeral).await;
    let _ = terminal.show_cursor();
    result
}

async fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    targets: Vec<NodeTarget>,
    config: &std::path::Path,
    ephemeral: &mut Vec<rbee_proto::config::NodeConfig>,
) -> Result<(), TuiError> {
    let nodes = targets
        .iter()
        .map(|t| NodeState::new(t.name(), t.display_url()))
        .collect();
    let mut state = State::new(nodes);
    state.now = now_millis();

    let (action_tx, mut action_rx) = mpsc::channel::<Action>(ACTION_QUEUE);
    // Dropping the set when we return aborts every session task.
    let mut sessions = JoinSet::new();
    let mut task_node = HashMap::new();
    let mut effect_txs = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
        effect_txs.push(etx);
        let handle = sessions.spawn(crate::session::run_node(i, target, action_tx.clone(), erx));
        task_node.insert(handle.id(), i);
    }
    // SSH nodes added with `:add` report here once brought up (or why not).
    let (added_tx, mut added_rx) =
        mpsc::channel::<Result<rbee_proto::config::NodeConfig, String>>(4);

    // A polite kill or a closed terminal ends the dashboard like `q`, so the terminal is restored.
    let mut term = signal(SignalKind::terminate()).map_err(TuiError::Terminal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(TuiError::Terminal)?;
    let mut keys = EventStream::new();
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut clock = tokio::time::interval(CLOCK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let dispatch = |state: &mut State, effect_txs: &[mpsc::Sender<Effect>], action: Action| {
        state.now = now_millis();
        for effect in update(state, action) {
            route(state, effect_txs, effect);
        }
        if let Some(req) = state.add_node.take() {
            let (tx, actions, config) = (added_tx.clone(), action_tx.clone(), config.to_path_buf());
            tokio::spawn(async move {
                let name = req.node.name.clone();
                let asked = req.clone();
                let failed =
                    match crate::ssh::add_node(&config, req, crate::session::CONNECT_TIMEOUT).await
                    {
                        Ok((node, _)) => {
                            let _ = tx.send(Ok(node)).await;
                            return;
                        }
                        Err(TuiError::Ssh { node, source }) => match *source {
                            // A key nobody trusted yet: ask the operator, showing its fingerprint.
                            crate::ssh::SshError::HostKeyUnknown {
                                host,
                                algo,
                                fingerprint,
                            } => {
                                let key = format!("{algo} {fingerprint}");
                                let _ = actions
                                    .send(Action::HostKeyUnknown {
                                        req: asked,
                                        host,
                                        key,
                                    })
                                    .await;
                                return;
                            }
                            other => TuiError::Ssh {
                                node,
                                source: Box::new(other),
                            },
                        },
                        Err(e) => e,
                    };
                let _ = tx
                    .send(Err(format!("adding {name} failed: {failed}")))
                    .await;
            });
        }
    };

    while !state.should_quit {
        tokio::select! {
            ev = keys.next() => match ev {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => dispatch(&mut state, &effect_txs, Action::Key(k)),
                Some(Ok(TermEvent::Resize(w, h))) => dispatch(&mut state, &effect_txs, Action::Resize(w, h)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(TuiError::Terminal(e)),
                None => return Ok(()),
            },
            Some(action) = action_rx.recv() => {
                dispatch(&mut state, &effect_txs, action);
                for _ in 1..crate::session::DRAIN {
                    match action_rx.try_recv() {
                        Ok(action) => dispatch(&mut state, &effect_txs, action),
                        Err(_) => break,
                    }
                }
            }
            Some(added) = added_rx.recv() => {
                match added {
                    Ok(node) => {
                        let i = state.nodes.len();
                        let target = NodeTarget::Remote(node.clone());
                        state.nodes.push(NodeState::new(target.name(), target.display_url()));
                        let (etx, erx) = mpsc::channel(EFFECT_QUEUE);
                        effect_txs.push(etx);
                        let handle = sessions.spawn(crate::session::run_node(i, target, action_tx.clone(), erx));
                        task_node.insert(handle.id(), i);
                        if node.ephemeral {
                            ephemeral.push(node.clone());
                        }
                        state.flash(format!("added node {} (ssh://{})", node.name, node.ssh.as_deref().unwrap_or("")));
                    }
                    Err(e) => state.flash_error(e),
                }
                state.dirty = true;
            }
            _ = term.recv() => break,
            _ = hup.recv() => break,
            _ = clock.tick() => dispatch(&mut state, &effect_txs, Action::Tick),
            _ = frame.tick() => {
                if state.dirty {
                    terminal.draw(|f| crate::view::render(&state, f)).map_err(TuiError::Terminal)?;
                    state.dirty = false;
                }
            }
            Some(res) = sessions.join_next_with_id(), if !sessions.is_empty() => {
                // A session task only ends on its own by panicking; say so rather than go quiet.
                let (id, why) = match res {
                    Ok((id, ())) => (id, "stopped".to_string()),
                    Err(e) => (e.id(), e.to_string()),
                };
                if let Some(&n) = task_node.get(&id) {
                    let name = state.nodes[n].name.clone();
                    state.push_event(&name, EventKind::Error, format!("session task {why}; restart the dashboard (see the log)"));
                    state.dirty = true;
                }
            }
        }
    }
    Ok(())
}

/// Hand an effect to its node's session without ever blocking the UI. Public so headless
/// drivers of the same loop (the fan-in benchmark) route effects exactly as the dashboard does.
pub fn route(state: &mut State, effect_txs: &[mpsc::Sender<Effect>], effect: Effect) {
    let node = effect.node();
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
