//! The prompt pane: opening it on a worker or model, sending, cancelling, and the stream of a
//! generation coming back.
use rbee_proto::session::Request;
use rbee_proto::SamplingParams;

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
            if let Some(run) = run_mut(state, prompt) {
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
            }
        }
        _ => {}
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
    let pane = state.prompt.get_or_insert_with(PromptPane::default);
    if pane.node != node || pane.worker != worker || pane.model != model {
        pane.output.clear();
        pane.asked.clear();
        pane.run = None;
    }
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
    if pane.input.trim().is_empty() {
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
    let id = state.next_prompt;
    state.next_prompt += 1;
    let pane = state.prompt.as_mut().expect("checked above");
    let prompt = std::mem::take(&mut pane.input);
    // When aimed at a worker, send only the worker: the agent routes by it.
    let model = if pane.worker.is_some() {
        None
    } else {
        pane.model.clone()
    };
    let request = Request::Infer {
        worker: pane.worker.clone(),
        model,
        prompt: prompt.clone(),
        params: SamplingParams::default(),
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
