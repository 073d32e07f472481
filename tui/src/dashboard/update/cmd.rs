//! Keys: the key table says which command a key means in the live mode; everything else typed
//! goes into the text field that has the focus.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{command, nav, popup, prompt};
use crate::dashboard::action::Effect;
use crate::dashboard::keys::{self, Cmd, Mode};
use crate::dashboard::state::{InputKind, InputLine, Pending, Popup, State};

/// One key press: the command it means in the live mode, else a character for the focused field.
pub(super) fn on_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    state.flash = None;
    let mode = keys::mode(state);
    if let Some(cmd) = keys::lookup(mode, &key) {
        return run(state, cmd);
    }
    let typed = match key.code {
        KeyCode::Char(c)
            if !key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            Some(c)
        }
        _ => None,
    };
    match mode {
        Mode::Prompt => {
            if let (Some(c), Some(p)) = (typed, state.prompt.as_mut()) {
                p.input.push(c);
            }
        }
        Mode::Input => {
            if let (Some(c), Some(line)) = (typed, state.input.as_mut()) {
                line.text.push(c);
                if line.kind == InputKind::Filter {
                    state.filter = line.text.clone();
                }
            }
        }
        Mode::Confirm => {
            state.popup = None;
            state.flash("cancelled");
        }
        Mode::Normal | Mode::Dialog | Mode::Help => {}
    }
    Vec::new()
}

/// Carry out one command of the key table.
pub(super) fn run(state: &mut State, cmd: Cmd) -> Vec<Effect> {
    match cmd {
        Cmd::Up => nav::move_selection(state, -1),
        Cmd::Down => nav::move_selection(state, 1),
        Cmd::Open => return nav::open(state),
        Cmd::Back => nav::back(state),
        Cmd::SwitchPane => nav::switch_pane(state),
        Cmd::Spawn => return popup::open_spawn(state),
        Cmd::Kill | Cmd::Restart => match state.selected_worker() {
            Some((node, worker)) => {
                let p = if cmd == Cmd::Kill {
                    Pending::Kill { node, worker }
                } else {
                    Pending::Restart { node, worker }
                };
                state.popup = Some(Popup::Confirm(p));
            }
            None => state.flash_error("no worker selected: open a node with Enter and pick one"),
        },
        Cmd::UnloadAll => popup::ask_unload_all(state),
        Cmd::Requests => nav::toggle_requests(state),
        Cmd::Prompt => prompt::open(state),
        Cmd::Filter => {
            state.input = Some(InputLine {
                kind: InputKind::Filter,
                text: state.filter.clone(),
            })
        }
        Cmd::CommandLine => {
            state.input = Some(InputLine {
                kind: InputKind::Command,
                text: String::new(),
            })
        }
        Cmd::Help => state.popup = Some(Popup::Help),
        Cmd::Quit => state.should_quit = true,
        Cmd::PromptSend => return prompt::send(state),
        Cmd::PromptCancel => return prompt::cancel(state),
        Cmd::PromptNew => prompt::new_conversation(state),
        Cmd::DeleteChar => {
            if let Some(line) = state.input.as_mut() {
                line.text.pop();
                if line.kind == InputKind::Filter {
                    state.filter = line.text.clone();
                }
            } else if let Some(p) = state.prompt.as_mut() {
                p.input.pop();
            }
        }
        Cmd::InputSubmit => {
            if let Some(line) = state.input.take() {
                match line.kind {
                    InputKind::Filter => state.filter = line.text,
                    InputKind::Command => return command::run(state, &line.text),
                }
            }
        }
        Cmd::InputCancel => {
            if let Some(line) = state.input.take() {
                if line.kind == InputKind::Filter {
                    state.filter.clear();
                }
            }
        }
        Cmd::ConfirmYes => {
            if let Some(Popup::Confirm(p)) = state.popup.take() {
                return popup::confirmed(state, p);
            }
        }
        Cmd::ConfirmNo => {
            state.popup = None;
            state.flash("cancelled");
        }
        Cmd::DialogNext => popup::next_field(state, true),
        Cmd::DialogPrev => popup::next_field(state, false),
        Cmd::DialogLess => popup::step_value(state, -1),
        Cmd::DialogMore => popup::step_value(state, 1),
        Cmd::DialogSubmit => return popup::submit_spawn(state),
        Cmd::DialogCancel | Cmd::HelpClose => state.popup = None,
    }
    Vec::new()
}
