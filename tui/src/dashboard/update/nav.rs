//! Moving around: rows, screens, panes, and the log refresh of an open worker screen.
use rbee_proto::session::Request;

use crate::dashboard::action::Effect;
use crate::dashboard::state::{Conn, Screen, State};

/// Log lines fetched when a worker's screen opens.
pub const LOG_TAIL_LINES: usize = 200;
/// How often an open worker screen refetches its log tail (agents do not push log lines).
pub const LOG_REFRESH_MS: u64 = 2000;

/// While a worker's screen is open, its log tail is fetched again every `LOG_REFRESH_MS`.
pub(super) fn refresh_log(state: &mut State) -> Vec<Effect> {
    let Screen::Worker(n, w) = &state.screen else {
        return Vec::new();
    };
    let connected = state
        .nodes
        .get(*n)
        .is_some_and(|node| node.conn == Conn::Connected);
    if !connected || state.now.saturating_sub(state.log_fetched_at) < LOG_REFRESH_MS {
        return Vec::new();
    }
    state.log_fetched_at = state.now;
    vec![Effect::Request {
        node: *n,
        request: Request::TailLog {
            worker: w.clone(),
            lines: LOG_TAIL_LINES,
        },
    }]
}

pub(super) fn move_selection(state: &mut State, delta: isize) {
    fn step(pos: Option<usize>, len: usize, delta: isize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let p = pos.unwrap_or(0) as isize + if pos.is_some() { delta } else { 0 };
        Some(p.clamp(0, len as isize - 1) as usize)
    }
    match state.screen.clone() {
        Screen::Nodes => {
            let vis = state.visible_nodes();
            let pos = vis.iter().position(|&i| i == state.node_sel);
            if let Some(p) = step(pos, vis.len(), delta) {
                state.node_sel = vis[p];
            }
        }
        Screen::Node(n) => {
            let vis: Vec<String> = state
                .visible_workers(n)
                .iter()
                .map(|w| w.info.id.clone())
                .collect();
            let pos = state
                .worker_sel
                .as_ref()
                .and_then(|s| vis.iter().position(|id| id == s));
            if let Some(p) = step(pos, vis.len(), delta) {
                state.worker_sel = Some(vis[p].clone());
            }
        }
        Screen::Events => {
            let len = state.visible_events().len();
            if let Some(p) = step(Some(state.event_sel.min(len.saturating_sub(1))), len, delta) {
                state.event_sel = p;
            }
        }
        Screen::Worker(..) | Screen::Requests => {}
    }
}

pub(super) fn set_screen(state: &mut State, screen: Screen) {
    state.filter.clear();
    state.screen = screen;
}

pub(super) fn open(state: &mut State) -> Vec<Effect> {
    match state.screen.clone() {
        Screen::Nodes => {
            let vis = state.visible_nodes();
            let Some(&first) = vis.first() else {
                return Vec::new();
            };
            let n = if vis.contains(&state.node_sel) {
                state.node_sel
            } else {
                first
            };
            state.node_sel = n;
            state.worker_sel = state.nodes[n].workers.first().map(|w| w.info.id.clone());
            set_screen(state, Screen::Node(n));
            Vec::new()
        }
        Screen::Node(_) => {
            let Some((n, w)) = state.selected_worker() else {
                return Vec::new();
            };
            state.worker_sel = Some(w.clone());
            set_screen(state, Screen::Worker(n, w.clone()));
            state.log_fetched_at = state.now;
            if state.nodes[n].conn == Conn::Connected {
                vec![Effect::Request {
                    node: n,
                    request: Request::TailLog {
                        worker: w,
                        lines: LOG_TAIL_LINES,
                    },
                }]
            } else {
                Vec::new()
            }
        }
        Screen::Worker(..) | Screen::Events | Screen::Requests => Vec::new(),
    }
}

pub(super) fn back(state: &mut State) {
    if !state.filter.is_empty() {
        state.filter.clear();
        return;
    }
    match state.screen.clone() {
        Screen::Worker(n, w) => {
            state.worker_sel = Some(w);
            set_screen(state, Screen::Node(n));
        }
        Screen::Node(n) => {
            state.node_sel = n;
            set_screen(state, Screen::Nodes);
        }
        Screen::Events | Screen::Requests => {
            let to = state.events_return.clone();
            set_screen(state, to);
        }
        Screen::Nodes => {}
    }
}

pub(super) fn switch_pane(state: &mut State) {
    if let Some(p) = state.prompt.as_mut() {
        p.focused = !p.focused;
        return;
    }
    if state.screen == Screen::Events {
        let to = state.events_return.clone();
        set_screen(state, to);
    } else {
        state.events_return = state.screen.clone();
        state.event_sel = 0;
        set_screen(state, Screen::Events);
    }
}

/// `R`: the gateway's Requests screen, or back to where it was opened from.
pub(super) fn toggle_requests(state: &mut State) {
    if state.screen == Screen::Requests {
        let to = state.events_return.clone();
        set_screen(state, to);
    } else {
        if state.screen != Screen::Events {
            state.events_return = state.screen.clone();
        }
        set_screen(state, Screen::Requests);
    }
}
