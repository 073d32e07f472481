//! `update`: the only place the dashboard's state changes. It takes one action, changes the state,
//! and returns the requests the node sessions should send. No I/O, no clock: tests drive it
//! with plain values.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec, Telemetry, WorkerInfo};
use rbee_proto::{SamplingParams, UnixMillis, WorkerState};

use crate::action::{describe, short_model, Action, Effect, InferDone, PromptId};
use crate::keys::{self, Cmd, Mode};
use crate::state::{
    natural_key, Conn, EventKind, History, InputKind, InputLine, NodeIdx, NodeState, Pending,
    Popup, PromptPane, PromptRun, PullView, Screen, SpawnDialog, SpawnField, State, WorkerView,
    MAX_SPAWN_COUNT,
};

/// Log lines fetched when a worker's screen opens.
pub const LOG_TAIL_LINES: usize = 200;
/// How often an open worker screen refetches its log tail (agents do not push log lines).
pub const LOG_REFRESH_MS: u64 = 2000;

/// Apply one action. Returns the requests to send, in order.
pub fn update(state: &mut State, action: Action) -> Vec<Effect> {
    state.dirty = true;
    match action {
        Action::Key(key) => on_key(state, key),
        Action::Tick => refresh_log(state),
        Action::Resize(..) => Vec::new(),
        Action::Connecting { node, attempt } => {
            if let Some(n) = state.nodes.get_mut(node) {
                // Keep showing why it is unreachable while the next attempt runs.
                if !matches!(n.conn, Conn::Unreachable { .. }) {
                    n.conn = Conn::Connecting { attempt };
                }
            }
            Vec::new()
        }
        Action::Connected {
            node,
            url,
            agent_version,
            agent_node,
        } => {
            let Some(n) = state.nodes.get_mut(node) else {
                return Vec::new();
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
            Vec::new()
        }
        Action::HostKeyUnknown { req, host, key } => {
            state.popup = Some(Popup::Confirm(Pending::TrustHostKey { req, host, key }));
            Vec::new()
        }
        Action::Disconnected {
            node,
            reason,
            retry_in_ms,
        } => {
            let now = state.now;
            let Some(n) = state.nodes.get_mut(node) else {
                return Vec::new();
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
            let name = n.name.clone();
            if !same {
                state.push_event(&name, EventKind::Error, format!("unreachable: {reason}"));
            }
            Vec::new()
        }
        Action::Latency { node, ms } => {
            if let Some(n) = state.nodes.get_mut(node) {
                n.latency_ms = Some(ms);
            }
            Vec::new()
        }
        Action::AgentEvent { node, event } => {
            on_event(state, node, event);
            Vec::new()
        }
        Action::AgentError { node, error } => {
            let name = node_name(state, node);
            state.push_event(&name, EventKind::Error, error.to_string());
            Vec::new()
        }
        Action::Reply {
            node,
            request,
            result,
        } => {
            on_reply(state, node, request, result);
            Vec::new()
        }
        Action::PromptSent { prompt, at } => {
            if let Some(run) = run_mut(state, prompt) {
                run.sent_at = Some(at);
            }
            Vec::new()
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
            Vec::new()
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
            Vec::new()
        }
    }
}

/// While a worker's screen is open, its log tail is fetched again every `LOG_REFRESH_MS`.
fn refresh_log(state: &mut State) -> Vec<Effect> {
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

fn run_mut(state: &mut State, prompt: PromptId) -> Option<&mut PromptRun> {
    state
        .prompt
        .as_mut()?
        .run
        .as_mut()
        .filter(|r| r.id == prompt)
}

fn node_name(state: &State, node: NodeIdx) -> String {
    state
        .nodes
        .get(node)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("node#{node}"))
}

// ---------------------------------------------------------------------------------------------
// What agents tell us.

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
            state.push_event(&name, EventKind::Audit, text);
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
                let text = format!("pulled {model} ({})", crate::view::fmt_bytes(total_bytes));
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
    let name = node_name(state, node);
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
        | Reply::Pong { .. } => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.

fn on_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
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
pub fn run(state: &mut State, cmd: Cmd) -> Vec<Effect> {
    match cmd {
        Cmd::Up => move_selection(state, -1),
        Cmd::Down => move_selection(state, 1),
        Cmd::Open => return open(state),
        Cmd::Back => back(state),
        Cmd::SwitchPane => switch_pane(state),
        Cmd::Spawn => return open_spawn(state),
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
        Cmd::Prompt => open_prompt(state),
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
        Cmd::PromptSend => return send_prompt(state),
        Cmd::PromptCancel => return cancel_prompt(state),
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
                    InputKind::Command => return run_command(state, &line.text),
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
                return confirmed(state, p);
            }
        }
        Cmd::ConfirmNo => {
            state.popup = None;
            state.flash("cancelled");
        }
        Cmd::DialogNext | Cmd::DialogPrev => {
            if let Some(Popup::Spawn(d)) = state.popup.as_mut() {
                let order = [SpawnField::Model, SpawnField::Device, SpawnField::Count];
                let i = order.iter().position(|f| *f == d.field).unwrap_or(0);
                let step = if cmd == Cmd::DialogNext {
                    1
                } else {
                    order.len() - 1
                };
                d.field = order[(i + step) % order.len()];
            }
        }
        Cmd::DialogLess | Cmd::DialogMore => {
            dialog_step(state, if cmd == Cmd::DialogMore { 1 } else { -1 })
        }
        Cmd::DialogSubmit => return submit_spawn(state),
        Cmd::DialogCancel | Cmd::HelpClose => state.popup = None,
    }
    Vec::new()
}

fn move_selection(state: &mut State, delta: isize) {
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
        Screen::Worker(..) => {}
    }
}

fn set_screen(state: &mut State, screen: Screen) {
    state.filter.clear();
    state.screen = screen;
}

fn open(state: &mut State) -> Vec<Effect> {
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
        Screen::Worker(..) | Screen::Events => Vec::new(),
    }
}

fn back(state: &mut State) {
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
        Screen::Events => {
            let to = state.events_return.clone();
            set_screen(state, to);
        }
        Screen::Nodes => {}
    }
}

fn switch_pane(state: &mut State) {
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

fn open_spawn(state: &mut State) -> Vec<Effect> {
    if !matches!(
        state.screen,
        Screen::Nodes | Screen::Node(_) | Screen::Worker(..)
    ) || state.nodes.is_empty()
    {
        state.flash_error("spawn works on a node: go to :nodes first");
        return Vec::new();
    }
    let node = state.current_node();
    let n = &state.nodes[node];
    if n.conn != Conn::Connected {
        let text = format!(
            "node {} is {}: cannot spawn there now",
            n.name,
            n.conn.label()
        );
        state.flash_error(text);
        return Vec::new();
    }
    state.popup = Some(Popup::Spawn(SpawnDialog {
        node,
        field: SpawnField::Model,
        model: 0,
        device: 0,
        count: 1,
    }));
    // The catalog may have changed since we connected.
    vec![Effect::Request {
        node,
        request: Request::ListModels,
    }]
}

fn dialog_step(state: &mut State, delta: i64) {
    let Some(Popup::Spawn(d)) = state.popup.as_mut() else {
        return;
    };
    let Some(n) = state.nodes.get(d.node) else {
        return;
    };
    let wrap = |i: usize, len: usize| -> usize {
        if len == 0 {
            0
        } else {
            (i as i64 + delta).rem_euclid(len as i64) as usize
        }
    };
    match d.field {
        SpawnField::Model => d.model = wrap(d.model, n.models.len()),
        SpawnField::Device => d.device = wrap(d.device, n.devices().len()),
        SpawnField::Count => {
            d.count = (d.count as i64 + delta).clamp(1, MAX_SPAWN_COUNT as i64) as u32
        }
    }
}

fn submit_spawn(state: &mut State) -> Vec<Effect> {
    let Some(Popup::Spawn(d)) = state.popup.clone() else {
        return Vec::new();
    };
    let n = &state.nodes[d.node];
    let Some(model) = n.models.get(d.model).or(n.models.first()) else {
        let text = format!(
            "no models on {}: add files to the agent's model dirs",
            n.name
        );
        state.flash_error(text);
        return Vec::new();
    };
    let devices = n.devices();
    let device = devices
        .get(d.device)
        .cloned()
        .unwrap_or_else(|| "cpu".into());
    let spec = SpawnSpec {
        model: model.reference.clone(),
        device: device.clone(),
        threads: None,
    };
    let text = format!(
        "spawning {} × {} on {} ({device})…",
        d.count, model.name, n.name
    );
    state.popup = None;
    state.flash(text);
    (0..d.count)
        .map(|_| Effect::Request {
            node: d.node,
            request: Request::Spawn(spec.clone()),
        })
        .collect()
}

fn confirmed(state: &mut State, p: Pending) -> Vec<Effect> {
    let (node, request, verb) = match p {
        Pending::TrustHostKey { mut req, host, key } => {
            state.flash(format!(
                "trusting {key} for {host}; adding {} over SSH…",
                req.node.name
            ));
            req.accept_new_host_key = true;
            state.add_node = Some(req);
            return Vec::new();
        }
        Pending::Kill { node, worker } => (
            node,
            Request::Kill {
                worker: worker.clone(),
            },
            format!("killing {worker}"),
        ),
        Pending::Restart { node, worker } => (
            node,
            Request::Restart {
                worker: worker.clone(),
            },
            format!("restarting {worker}"),
        ),
    };
    let name = node_name(state, node);
    state.flash(format!("{verb} on {name}…"));
    vec![Effect::Request { node, request }]
}

fn open_prompt(state: &mut State) {
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

fn send_prompt(state: &mut State) -> Vec<Effect> {
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
        let text = format!("node {} is not connected", node_name(state, node));
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

fn cancel_prompt(state: &mut State) -> Vec<Effect> {
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

fn run_command(state: &mut State, text: &str) -> Vec<Effect> {
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
        ("pull", Some(model)) => {
            let node = state.current_node();
            if node >= state.nodes.len() {
                state.flash_error("no node to pull on");
            } else if !model.starts_with("hf:") {
                state.flash_error(format!("pull takes hf:ORG/REPO[@REV][:FILE], not {model}"));
            } else {
                let name = state.nodes[node].name.clone();
                state.flash(format!("pulling {model} on {name}…"));
                return vec![Effect::Request { node, request: Request::Pull { model: model.to_string() } }];
            }
        }
        ("add", _) => {
            let words: Vec<&str> = text.split_whitespace().skip(1).collect();
            match crate::ssh::AddNodeRequest::parse(&words) {
                Ok(req) if state.nodes.iter().any(|n| n.name == req.node.name) => {
                    state.flash_error(format!("a node named {} exists already", req.node.name))
                }
                Ok(req) => {
                    state.flash(format!("adding {} over SSH…", req.node.name));
                    state.add_node = Some(req);
                }
                Err(e) => state.flash_error(e),
            }
        }
        _ => state.flash_error(format!(
            "unknown command :{text} (try :nodes, :events, :node NAME, :pull hf:ORG/REPO:FILE, :add NAME USER@HOST, :q)"
        )),
    }
    Vec::new()
}

/// Convenience for tests and callers: a key press as an action.
pub fn key(code: KeyCode) -> Action {
    Action::Key(KeyEvent::new(code, KeyModifiers::NONE))
}
