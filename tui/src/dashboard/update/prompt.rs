//! The prompt pane, a conversation: opening it on a worker or model, sending each turn with the
//! history before it (or as a plain completion when the model has no chat template), a new
//! conversation, the system turn, cancelling, and the stream of an answer coming back.
use rbee_proto::session::Request;
use rbee_proto::{ChatMessage, Role, SamplingParams};

use crate::dashboard::action::{Action, Effect, InferDone};
use crate::dashboard::state::{Conn, PromptId, PromptPane, PromptRun, Screen, State};

/// Apply what a session reports about a prompt it streams.
pub(super) fn on_progress(state: &mut State, action: Action) {
    match action {
        Action::PromptSent { prompt, at } => {
            if let Some(run) = run_mut(state, prompt) {
                run.sent_at = Some(at);
            }
        }
        Action::PromptToken { prompt, text, at } => {
            if let Some(pane) = state.prompt.as_mut() {
                if let Some(run) = pane.run.as_mut().filter(|r| r.id == prompt && r.active) {
                    run.tokens += 1;
                    run.first_token_at.get_or_insert(at);
                    run.last_token_at = Some(at);
                    pane.output.push_str(&text);
                }
            }
        }
        Action::PromptDone { prompt, result, at } => {
            let finished = result.is_ok();
            if let Some(run) = run_mut(state, prompt) {
                let keep = finished && !run.cancelled;
                run.active = false;
                run.last_token_at.get_or_insert(at);
                match result {
                    Ok(InferDone {
                        worker,
                        finish_reason,
                        usage,
                    }) => {
                        run.worker = Some(worker);
                        run.finish = Some(finish_reason);
                        run.usage = Some(usage);
                    }
                    // The agent's "cancelled" answer to our own cancel is not news.
                    Err(e) if !run.cancelled => run.error = Some(e),
                    Err(_) => {}
                }
                if keep {
                    finish_turn(state);
                }
            }
        }
        _ => {}
    }
}

/// An answered turn joins the history: the question and the answer, in that order.
fn finish_turn(state: &mut State) {
    if let Some(pane) = state.prompt.as_mut() {
        let asked = std::mem::take(&mut pane.asked);
        let answer = std::mem::take(&mut pane.output);
        pane.history.push(message(Role::User, asked));
        pane.history.push(message(Role::Assistant, answer));
    }
}

fn message(role: Role, content: String) -> ChatMessage {
    ChatMessage { role, content }
}

/// Whether the worker the pane aims at (or the first serving worker of its model) reported no
/// chat template. Unknown (not ready yet) counts as chat: the worker says so if it cannot.
fn completion_only(state: &State, node: usize, worker: Option<&str>, model: Option<&str>) -> bool {
    let Some(n) = state.nodes.get(node) else {
        return false;
    };
    let view = match worker {
        Some(w) => n.worker(w),
        None => n
            .workers
            .iter()
            .find(|w| w.info.state.is_serving() && Some(w.info.model.as_str()) == model),
    };
    view.and_then(|v| v.info.summary.as_ref())
        .is_some_and(|s| s.chat_template.is_none())
}

/// `Ctrl-N` in the pane: a new conversation (the system turn stays).
pub(super) fn new_conversation(state: &mut State) {
    let Some(pane) = state.prompt.as_mut() else {
        return;
    };
    if pane.run.as_ref().is_some_and(|r| r.active) {
        state.flash_error("still generating: Esc cancels");
        return;
    }
    pane.history.clear();
    pane.asked.clear();
    pane.output.clear();
    pane.run = None;
    state.flash("new conversation");
}

/// `:system TEXT` (or `/system TEXT` typed in the pane): the system turn; empty clears it.
pub(super) fn set_system(state: &mut State, text: &str) {
    let Some(pane) = state.prompt.as_mut() else {
        state.flash_error("open the prompt pane first (p)");
        return;
    };
    pane.system = text.trim().to_string();
    if pane.system.is_empty() {
        state.flash("system prompt cleared");
    } else {
        state.flash("system prompt set");
    }
}

fn run_mut(state: &mut State, prompt: PromptId) -> Option<&mut PromptRun> {
    state
        .prompt
        .as_mut()?
        .run
        .as_mut()
        .filter(|r| r.id == prompt)
}

/// `p`: open the pane on the selected worker, or on any ready worker of the node.
pub(super) fn open(state: &mut State) {
    if let Some(p) = state.prompt.as_mut() {
        if p.run.as_ref().is_some_and(|r| r.active) {
            p.focused = true;
            return;
        }
    }
    let (node, worker, model) = match state.selected_worker() {
        Some((n, w)) => {
            let model = state.nodes[n].worker(&w).map(|v| v.info.model.clone());
            (n, Some(w), model)
        }
        None => {
            if state.nodes.is_empty() || !matches!(state.screen, Screen::Nodes | Screen::Node(_)) {
                state.flash_error("prompt works on a node or worker: go to :nodes first");
                return;
            }
            let n = state.current_node();
            let node = &state.nodes[n];
            match node.workers.iter().find(|w| w.info.state.is_serving()) {
                Some(w) => (n, None, Some(w.info.model.clone())),
                None => {
                    let text = format!("no ready worker on {}: spawn one with s", node.name);
                    state.flash_error(text);
                    return;
                }
            }
        }
    };
    let completion = completion_only(state, node, worker.as_deref(), model.as_deref());
    let pane = state.prompt.get_or_insert_with(PromptPane::default);
    if pane.node != node || pane.worker != worker || pane.model != model {
        pane.output.clear();
        pane.asked.clear();
        pane.history.clear();
        pane.run = None;
    }
    pane.completion = completion;
    pane.node = node;
    pane.worker = worker;
    pane.model = model;
    pane.focused = true;
}

/// Enter in the pane: send what is typed.
pub(super) fn send(state: &mut State) -> Vec<Effect> {
    let Some(pane) = state.prompt.as_ref() else {
        return Vec::new();
    };
    if pane.run.as_ref().is_some_and(|r| r.active) {
        state.flash_error("still generating: Esc cancels");
        return Vec::new();
    }
    let typed = pane.input.trim();
    if typed.is_empty() {
        return Vec::new();
    }
    if typed == "/clear" || typed == "/new" {
        state.prompt.as_mut().expect("checked above").input.clear();
        new_conversation(state);
        return Vec::new();
    }
    if let Some(text) = typed
        .strip_prefix("/system")
        .filter(|t| t.is_empty() || t.starts_with(' '))
    {
        let text = text.to_string();
        state.prompt.as_mut().expect("checked above").input.clear();
        set_system(state, &text);
        return Vec::new();
    }
    let node = pane.node;
    if state
        .nodes
        .get(node)
        .is_none_or(|n| n.conn != Conn::Connected)
    {
        let text = format!("node {} is not connected", state.node_name(node));
        state.flash_error(text);
        return Vec::new();
    }
    let completion = completion_only(state, node, pane.worker.as_deref(), pane.model.as_deref());
    let id = state.next_prompt;
    state.next_prompt += 1;
    let pane = state.prompt.as_mut().expect("checked above");
    pane.completion = completion;
    let prompt = std::mem::take(&mut pane.input);
    // When aimed at a worker, send only the worker: the agent routes by it.
    let model = if pane.worker.is_some() {
        None
    } else {
        pane.model.clone()
    };
    let request = if completion {
        Request::Infer {
            worker: pane.worker.clone(),
            model,
            prompt: prompt.clone(),
            params: SamplingParams::default(),
        }
    } else {
        let system = (!pane.system.is_empty()).then(|| message(Role::System, pane.system.clone()));
        let messages = system
            .into_iter()
            .chain(pane.history.iter().cloned())
            .chain([message(Role::User, prompt.clone())])
            .collect();
        Request::Chat {
            worker: pane.worker.clone(),
            model,
            messages,
            params: SamplingParams::default(),
        }
    };
    pane.asked = prompt;
    pane.output.clear();
    pane.run = Some(PromptRun {
        id,
        active: true,
        worker: pane.worker.clone(),
        ..PromptRun::default()
    });
    vec![Effect::Infer {
        node,
        prompt: id,
        request,
    }]
}

/// Esc in the pane: stop the generation, or close the pane when nothing runs.
pub(super) fn cancel(state: &mut State) -> Vec<Effect> {
    let Some(pane) = state.prompt.as_mut() else {
        return Vec::new();
    };
    match pane.run.as_mut().filter(|r| r.active) {
        Some(run) => {
            run.active = false;
            run.cancelled = true;
            vec![Effect::CancelInfer {
                node: pane.node,
                prompt: run.id,
            }]
        }
        None => {
            state.prompt = None;
            Vec::new()
        }
    }
}
