//! The `:` command line: screens by name, `:pull`, `:add`, `:unload-all`, `:system` (the prompt pane's system
//! turn), `:q`.
use rbee_proto::session::Request;

use super::nav::set_screen;
use crate::dashboard::action::Effect;
use crate::dashboard::state::{Popup, Screen, State};
use crate::nodes::add::parse_dashboard_add;

/// Run a `:` command line.
pub(super) fn run(state: &mut State, text: &str) -> Vec<Effect> {
    let text = text.trim().trim_start_matches(':').trim();
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("");
    let arg = words.next();
    match (verb, arg) {
        ("", _) => {}
        ("q" | "q!" | "quit" | "exit", _) => state.should_quit = true,
        ("nodes" | "n", _) => set_screen(state, Screen::Nodes),
        ("events" | "ev" | "e", _) => {
            if state.screen != Screen::Events {
                state.events_return = state.screen.clone();
                state.event_sel = 0;
                set_screen(state, Screen::Events);
            }
        }
        ("node" | "workers" | "w", None) => {
            let n = state.current_node();
            if n < state.nodes.len() {
                state.node_sel = n;
                set_screen(state, Screen::Node(n));
            }
        }
        ("node" | "workers" | "w", Some(name)) => {
            match state.nodes.iter().position(|n| n.name == name) {
                Some(i) => {
                    state.node_sel = i;
                    state.worker_sel = None;
                    set_screen(state, Screen::Node(i));
                }
                None => state.flash_error(format!("no node named {name}")),
            }
        }
        ("help", _) => state.popup = Some(Popup::Help),
        ("unload-all", _) => super::popup::ask_unload_all(state),
        ("requests" | "req", _) => set_screen(state, Screen::Requests),
        ("system", _) => super::prompt::set_system(state, text.strip_prefix("system").unwrap_or("")),
        ("pull", Some(model)) => return pull(state, model),
        ("add", _) => {
            let words: Vec<&str> = text.split_whitespace().skip(1).collect();
            return add(state, &words);
        }
        _ => state.flash_error(format!(
            "unknown command :{text} (try :nodes, :events, :node NAME, :pull hf:ORG/REPO:FILE, :add NAME USER@HOST, :system TEXT, :unload-all, :q)"
        )),
    }
    Vec::new()
}

/// `:pull hf:…` on the current node.
fn pull(state: &mut State, model: &str) -> Vec<Effect> {
    let node = state.current_node();
    if node >= state.nodes.len() {
        state.flash_error("no node to pull on");
    } else if !model.starts_with("hf:") {
        state.flash_error(format!("pull takes hf:ORG/REPO[@REV][:FILE], not {model}"));
    } else {
        let name = state.nodes[node].name.clone();
        state.flash(format!("pulling {model} on {name}…"));
        let request = Request::Pull {
            model: model.to_string(),
        };
        return vec![Effect::Request { node, request }];
    }
    Vec::new()
}

/// `:add NAME USER@HOST …`, read by the same definition as `rbee-tui nodes add --ssh`.
fn add(state: &mut State, words: &[&str]) -> Vec<Effect> {
    match parse_dashboard_add(words) {
        Ok(req) if state.nodes.iter().any(|n| n.name == req.node.name) => {
            state.flash_error(format!("a node named {} exists already", req.node.name));
            Vec::new()
        }
        Ok(req) => {
            state.flash(format!("adding {} over SSH…", req.node.name));
            vec![Effect::AddNode(req)]
        }
        Err(e) => {
            state.flash_error(e);
            Vec::new()
        }
    }
}
