//! What sessions and agents report: connection changes, events (the heartbeat hot path first),
//! replies to requests.
use rbee_proto::session::{AuditEntry, Event, Reply, Request, Telemetry, WorkerInfo};
use rbee_proto::{UnixMillis, WorkerState};

use crate::dashboard::action::Action;
use crate::dashboard::state::{
    natural_key, Conn, EventKind, History, NodeIdx, NodeState, Pending, Popup, PullView, State,
    WorkerView,
};
use crate::fmt::short_model;
use crate::nodes::describe::describe;

/// Apply an action a node's session (or an `:add` bring-up) sent.
pub(super) fn on_report(state: &mut State, action: Action) {
    match action {
        Action::Connecting { node, attempt } => {
            if let Some(n) = state.nodes.get_mut(node) {
                // Keep showing why it is unreachable while the next attempt runs.
                if !matches!(n.conn, Conn::Unreachable { .. }) {
                    n.conn = Conn::Connecting { attempt };
                }
            }
        }
        Action::Connected {
            node,
            url,
            agent_version,
            agent_node,
        } => connected(state, node, url, agent_version, agent_node),
        Action::HostKeyUnknown { req, host, key } => {
            state.popup = Some(Popup::Confirm(Pending::TrustHostKey { req, host, key }));
        }
        Action::Disconnected {
            node,
            reason,
            retry_in_ms,
        } => disconnected(state, node, reason, retry_in_ms),
        Action::Latency {
            node,
            ms,
            clock_offset_ms,
        } => {
            if let Some(n) = state.nodes.get_mut(node) {
                n.latency_ms = Some(ms);
                n.clock_offset_ms = Some(clock_offset_ms);
            }
        }
        Action::AgentEvent { node, event } => on_event(state, node, event),
        Action::AgentError { node, error } => {
            let name = state.node_name(node);
            state.push_event(&name, EventKind::Error, error.to_string());
        }
        Action::Reply {
            node,
            request,
            result,
        } => on_reply(state, node, request, result),
        Action::Key(_)
        | Action::Tick
        | Action::Resize(..)
        | Action::Requests(_)
        | Action::PromptSent { .. }
        | Action::PromptToken { .. }
        | Action::PromptDone { .. } => {}
    }
}

fn connected(
    state: &mut State,
    node: NodeIdx,
    url: String,
    agent_version: String,
    agent_node: String,
) {
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    n.conn = Conn::Connected;
    // The local node's address is only known once its agent runs.
    n.url = url;
    n.agent_version = Some(agent_version.clone());
    n.agent_node = Some(agent_node.clone());
    let name = n.name.clone();
    state.push_event(
        &name,
        EventKind::Info,
        format!("connected to {agent_node} (agent {agent_version})"),
    );
}

fn disconnected(state: &mut State, node: NodeIdx, reason: String, retry_in_ms: u64) {
    let now = state.now;
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    let (since, same) = match &n.conn {
        Conn::Unreachable {
            since, reason: old, ..
        } => (*since, *old == reason),
        _ => (now, false),
    };
    n.conn = Conn::Unreachable {
        reason: reason.clone(),
        retry_in_ms,
        since,
    };
    n.latency_ms = None;
    n.clock_offset_ms = None;
    let name = n.name.clone();
    if !same {
        state.push_event(&name, EventKind::Error, format!("unreachable: {reason}"));
    }
}

fn on_event(state: &mut State, node: NodeIdx, event: Event) {
    let now = state.now;
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    // The hot path (one per worker per heartbeat), before anything is copied.
    if let Event::Heartbeat {
        worker,
        tokens_per_s,
        rss_bytes,
        in_flight,
    } = &event
    {
        if let Some(w) = n.worker_mut(worker) {
            w.info.tokens_per_s = *tokens_per_s;
            w.info.rss_bytes = *rss_bytes;
            w.info.in_flight = *in_flight;
            w.heartbeat_at = Some(now);
            w.tokps.push(tokens_per_s.round() as u64);
        }
        return;
    }
    let name = n.name.clone();
    match event {
        Event::WorkerState { worker } => {
            let id = worker.id.clone();
            let (new_state, last_exit, model) =
                (worker.state, worker.last_exit.clone(), worker.model.clone());
            let prev = upsert_worker(n, worker, now);
            // The agent forgets a worker once it is stopped on purpose; so do we.
            if new_state == WorkerState::Exited {
                n.workers.retain(|w| w.info.id != id);
            }
            if prev != Some(new_state) {
                let kind = match new_state {
                    WorkerState::Crashed | WorkerState::Failed => EventKind::Error,
                    _ => EventKind::State,
                };
                let mut text = match prev {
                    Some(p) => format!("{id} {p} → {new_state}"),
                    None => format!("{id} {new_state} ({})", short_model(&model)),
                };
                if kind == EventKind::Error {
                    if let Some(e) = last_exit {
                        text.push_str(&format!(": {e}"));
                    }
                }
                state.push_event(&name, kind, text);
            }
        }
        Event::WorkerReady {
            worker,
            model,
            spawn_to_ready_ms,
        } => {
            let text = format!("{worker} ready: {} in {spawn_to_ready_ms} ms", model.name);
            if let Some(w) = n.worker_mut(&worker) {
                w.info.summary = Some(model);
                w.spawn_to_ready_ms = Some(spawn_to_ready_ms);
            }
            state.push_event(&name, EventKind::State, text);
        }
        Event::Heartbeat { .. } => {}
        Event::Telemetry { telemetry } => apply_telemetry(n, telemetry),
        Event::Audit { entry } => {
            state.push_event(&name, EventKind::Audit, audit_text(&entry));
            if let Some(e) = state.events.front_mut() {
                e.at = entry.at;
            }
        }
        Event::Log { worker, line } => {
            if let Some(w) = n.worker_mut(&worker) {
                w.push_log(line);
            }
        }
        Event::PullProgress {
            model,
            file,
            downloaded_bytes,
            total_bytes,
        } => {
            n.pulls.retain(|p| p.model != model);
            if file.is_empty() && downloaded_bytes >= total_bytes {
                let text = format!("pulled {model} ({})", rbee_proto::fmt::bytes(total_bytes));
                state.push_event(&name, EventKind::State, text);
            } else {
                n.pulls.push(PullView {
                    model,
                    file,
                    downloaded_bytes,
                    total_bytes,
                });
            }
        }
    }
}

/// `spawn w3: model.gguf (from 127.0.0.1)`: an audit entry on one line.
fn audit_text(entry: &AuditEntry) -> String {
    let mut text = entry.action.clone();
    if let Some(w) = &entry.worker {
        text.push(' ');
        text.push_str(w);
    }
    if !entry.detail.is_empty() {
        text.push_str(": ");
        text.push_str(&entry.detail);
    }
    if let Some(p) = &entry.peer {
        text.push_str(&format!(" (from {p})"));
    }
    text
}

fn apply_telemetry(n: &mut NodeState, t: Telemetry) {
    n.cpu_history.push(t.cpu_percent.round() as u64);
    n.gpu_history.resize_with(t.gpus.len(), History::default);
    for (h, g) in n.gpu_history.iter_mut().zip(&t.gpus) {
        h.push(percent(g.mem_used_bytes, g.mem_total_bytes));
    }
    n.tokps_history.push(
        n.workers
            .iter()
            .map(|w| w.info.tokens_per_s)
            .sum::<f64>()
            .round() as u64,
    );
    n.telemetry = Some(t);
}

fn percent(used: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (used as u128 * 100 / total as u128) as u64
    }
}

/// Insert or refresh a worker; returns its previous state (`None` when it is new).
fn upsert_worker(n: &mut NodeState, info: WorkerInfo, now: UnixMillis) -> Option<WorkerState> {
    if let Some(w) = n.worker_mut(&info.id) {
        let prev = w.info.state;
        if let Some(age) = info.heartbeat_age_ms {
            w.heartbeat_at = Some(now.saturating_sub(age));
        }
        w.info = info;
        if w.info.state != prev {
            w.record_state(now);
        }
        return Some(prev);
    }
    let key = natural_key(&info.id);
    let at = n.workers.partition_point(|w| natural_key(&w.info.id) < key);
    n.workers.insert(at, WorkerView::new(info, now));
    None
}

/// Replace the worker list with a full snapshot, keeping history of workers that remain.
fn replace_workers(n: &mut NodeState, infos: Vec<WorkerInfo>, now: UnixMillis) {
    let ids: Vec<String> = infos.iter().map(|i| i.id.clone()).collect();
    n.workers.retain(|w| ids.contains(&w.info.id));
    for info in infos {
        upsert_worker(n, info, now);
    }
}

fn on_reply(state: &mut State, node: NodeIdx, request: Request, result: Result<Reply, String>) {
    let now = state.now;
    let name = state.node_name(node);
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{name}: {} failed: {e}", describe(&request));
            state.push_event(
                &name,
                EventKind::Error,
                format!("{} failed: {e}", describe(&request)),
            );
            state.flash_error(text);
            return;
        }
    };
    let Some(n) = state.nodes.get_mut(node) else {
        return;
    };
    match reply {
        Reply::Models { models } => n.models = models,
        Reply::Spawned { worker } => {
            let text = format!(
                "spawned {} ({}) on {name}",
                worker.id,
                short_model(&worker.model)
            );
            upsert_worker(n, worker, now);
            state.flash(text);
        }
        Reply::Killed { worker } => {
            n.workers.retain(|w| w.info.id != worker);
            state.flash(format!("killed {worker} on {name}"));
        }
        Reply::Restarted { worker } => state.flash(format!("restarting {worker} on {name}")),
        Reply::Workers { workers } => replace_workers(n, workers, now),
        Reply::Status { status } => {
            n.agent_version = Some(status.agent_version);
            if !status.node.is_empty() {
                n.agent_node = Some(status.node);
            }
            replace_workers(n, status.workers, now);
            apply_telemetry(n, status.telemetry);
        }
        Reply::Log { worker, lines } => {
            if let Some(w) = n.worker_mut(&worker) {
                w.log.clear();
                for l in lines {
                    w.push_log(l);
                }
            }
        }
        Reply::Pulled { model, .. } => {
            n.pulls.retain(|p| p.model != model);
            state.flash(format!("pulled {model} on {name}"));
        }
        Reply::InferDone { .. }
        | Reply::Cancelled { .. }
        | Reply::Subscribed
        | Reply::Pong { .. }
        | Reply::LogLines { .. }
        | Reply::Metrics { .. } => {}
    }
}
