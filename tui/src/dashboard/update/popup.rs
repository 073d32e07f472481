//! The spawn dialog and what a confirmation carries out.
use rbee_proto::session::{Request, SpawnSpec};

use crate::dashboard::action::Effect;
use crate::dashboard::state::{
    Conn, Pending, Popup, Screen, SpawnDialog, SpawnField, State, MAX_SPAWN_COUNT,
};

/// `s`: open the spawn dialog on the current node (and refresh its catalog).
pub(super) fn open_spawn(state: &mut State) -> Vec<Effect> {
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

/// Tab / BackTab in the dialog: the next or previous field, wrapping.
pub(super) fn next_field(state: &mut State, forward: bool) {
    if let Some(Popup::Spawn(d)) = state.popup.as_mut() {
        let order = [SpawnField::Model, SpawnField::Device, SpawnField::Count];
        let i = order.iter().position(|f| *f == d.field).unwrap_or(0);
        let step = if forward { 1 } else { order.len() - 1 };
        d.field = order[(i + step) % order.len()];
    }
}

/// Left / right in the dialog: the field's previous or next value.
pub(super) fn step_value(state: &mut State, delta: i64) {
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

/// Enter in the dialog: one spawn request per worker asked for.
pub(super) fn submit_spawn(state: &mut State) -> Vec<Effect> {
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
        ..Default::default()
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

/// `U` / `:unload-all`: ask before killing every worker of the current node.
pub(super) fn ask_unload_all(state: &mut State) {
    let node = state.current_node();
    let Some(n) = state.nodes.get(node) else {
        state.flash_error("no node to unload");
        return;
    };
    if n.workers.is_empty() {
        let text = format!("no workers on {}", n.name);
        state.flash_error(text);
        return;
    }
    let workers = n.workers.iter().map(|w| w.info.id.clone()).collect();
    state.popup = Some(Popup::Confirm(Pending::UnloadAll { node, workers }));
}

/// `y` in a confirm popup: do what it asked about.
pub(super) fn confirmed(state: &mut State, p: Pending) -> Vec<Effect> {
    let (node, request, verb) = match p {
        Pending::UnloadAll { node, workers } => {
            let name = state.node_name(node);
            state.flash(format!("unloading {} worker(s) on {name}…", workers.len()));
            return workers
                .into_iter()
                .map(|worker| Effect::Request {
                    node,
                    request: Request::Kill { worker },
                })
                .collect();
        }
        Pending::TrustHostKey { mut req, host, key } => {
            state.flash(format!(
                "trusting {key} for {host}; adding {} over SSH…",
                req.node.name
            ));
            req.accept_new_host_key = true;
            return vec![Effect::AddNode(req)];
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
    let name = state.node_name(node);
    state.flash(format!("{verb} on {name}…"));
    vec![Effect::Request { node, request }]
}
