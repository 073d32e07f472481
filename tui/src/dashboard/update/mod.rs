//! `update`: the only place the dashboard's state changes. It takes one action, changes the state,
//! and returns the effects to carry out (requests for node sessions, adding a node). No I/O, no
//! clock: tests drive it with plain values.
//!
//! One file per kind of input: `session` (what sessions and agents report), `cmd` (keys and the
//! key table's commands), `nav` (moving between screens and rows), `popup` (spawn dialog and
//! confirmations), `prompt` (the prompt pane) and `command` (the `:` line).
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::dashboard::action::{Action, Effect};
use crate::dashboard::state::State;

mod cmd;
mod command;
mod nav;
mod popup;
mod prompt;
mod session;

pub use nav::{LOG_REFRESH_MS, LOG_TAIL_LINES};

/// Apply one action. Returns the effects to carry out, in order.
pub fn update(state: &mut State, action: Action) -> Vec<Effect> {
    state.dirty = true;
    match action {
        Action::Key(key) => cmd::on_key(state, key),
        Action::Tick => nav::refresh_log(state),
        Action::Resize(..) => Vec::new(),
        Action::Requests(rows) => {
            state.requests = rows;
            Vec::new()
        }
        Action::PromptSent { .. } | Action::PromptToken { .. } | Action::PromptDone { .. } => {
            prompt::on_progress(state, action);
            Vec::new()
        }
        other => {
            session::on_report(state, other);
            Vec::new()
        }
    }
}

/// Convenience for tests and callers: a key press as an action.
pub fn key(code: KeyCode) -> Action {
    Action::Key(KeyEvent::new(code, KeyModifiers::NONE))
}
