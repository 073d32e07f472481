//! What the gateway knows of the cluster, kept from the node sessions' `Action`s: which nodes are
//! up, the models each can serve, their workers and their latest telemetry. Plain data, no I/O;
//! the hub applies actions and the scheduler reads it.
use std::collections::BTreeMap;

use rbee_proto::session::{Event, ModelEntry, Reply, Request, Telemetry, WorkerInfo};
use rbee_proto::{WorkerId, WorkerState};

use crate::dashboard::action::Action;
use crate::dashboard::state::NodeIdx;

/// One node as the gateway sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Its name in the config (`local` for the default node).
    pub name: String,
    /// A session is established.
    pub up: bool,
    /// Why it is down (empty while up or before the first attempt).
    pub reason: String,
    /// Models it can serve (`ListModels`, asked at every connect).
    pub models: Vec<ModelEntry>,
    /// Its workers, by id; exited ones are dropped.
    pub workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Its latest telemetry sample.
    pub telemetry: Option<Telemetry>,
}

impl NodeView {
    /// The entry of this node's store that `model` names, if any.
    pub fn entry(&self, model: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|e| answers_to(e, model))
    }

    /// Whether worker `w` of this node runs the model the client calls `model`.
    pub fn serves(&self, w: &WorkerInfo, model: &str) -> bool {
        if w.model == model || file_part(&w.model) == model {
            return true;
        }
        if w.summary.as_ref().is_some_and(|s| s.name == model) {
            return true;
        }
        self.entry(model).is_some_and(|e| {
            e.reference == w.model || file_part(&e.reference) == file_part(&w.model)
        })
    }

    /// Memory free for a new worker on `device` (`cpu`: RAM; `cuda:N`: that GPU; `auto`: the
    /// freest GPU, else RAM), from the latest sample; 0 before the first.
    pub fn free_memory(&self, device: &str) -> u64 {
        let Some(t) = &self.telemetry else {
            return 0;
        };
        let gpu_free = |g: &rbee_proto::session::GpuTelemetry| {
            g.mem_total_bytes.saturating_sub(g.mem_used_bytes)
        };
        let ram = t.mem_total_bytes.saturating_sub(t.mem_used_bytes);
        match device {
            "auto" => t.gpus.iter().map(gpu_free).max().unwrap_or(ram),
            d => match d.strip_prefix("cuda:").and_then(|i| i.parse::<u32>().ok()) {
                Some(i) => t.gpus.iter().find(|g| g.index == i).map_or(0, gpu_free),
                None => ram,
            },
        }
    }
}

/// The last part of a path or `hf:` reference: what people type as a model's file name.
fn file_part(reference: &str) -> &str {
    reference
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(reference)
}

/// Whether `name` is a form under which `models list` shows `e`: its name, its reference, or the
/// reference's file name (the rule the agent's store resolves names by).
pub fn answers_to(e: &ModelEntry, name: &str) -> bool {
    e.name == name || e.reference == name || file_part(&e.reference) == name
}

/// Every node, indexed as the sessions are.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// One per configured node, in config order.
    pub nodes: Vec<NodeView>,
}

impl Cluster {
    /// A cluster of `names`, all down until their sessions connect.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            nodes: names
                .into_iter()
                .map(|name| NodeView {
                    name,
                    reason: "connecting".into(),
                    ..NodeView::default()
                })
                .collect(),
        }
    }

    /// Apply what a session reported. True when it may change what can be scheduled.
    pub fn apply(&mut self, action: &Action) -> bool {
        match action {
            Action::Connected { node, .. } => self.with(*node, |n| {
                n.up = true;
                n.reason.clear();
            }),
            Action::Disconnected { node, reason, .. } => self.with(*node, |n| {
                n.up = false;
                n.reason = reason.clone();
            }),
            Action::AgentEvent { node, event } => self.event(*node, event),
            Action::Reply {
                node,
                request,
                result: Ok(reply),
            } => self.reply(*node, request, reply),
            _ => false,
        }
    }

    fn with(&mut self, node: NodeIdx, f: impl FnOnce(&mut NodeView)) -> bool {
        match self.nodes.get_mut(node) {
            Some(n) => {
                f(n);
                true
            }
            None => false,
        }
    }

    fn event(&mut self, node: NodeIdx, event: &Event) -> bool {
        match event {
            Event::WorkerState { worker } => self.with(node, |n| put_worker(n, worker.clone())),
            Event::WorkerReady { worker, model, .. } => self.with(node, |n| {
                if let Some(w) = n.workers.get_mut(worker) {
                    w.summary = Some(model.clone());
                    if !w.state.is_serving() {
                        w.state = WorkerState::Ready;
                    }
                }
            }),
            Event::Heartbeat {
                worker, in_flight, ..
            } => {
                if let Some(w) = self
                    .nodes
                    .get_mut(node)
                    .and_then(|n| n.workers.get_mut(worker))
                {
                    w.in_flight = *in_flight;
                }
                false
            }
            Event::Telemetry { telemetry } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.telemetry = Some(telemetry.clone());
                }
                false
            }
            _ => false,
        }
    }

    fn reply(&mut self, node: NodeIdx, request: &Request, reply: &Reply) -> bool {
        match (request, reply) {
            (_, Reply::Models { models }) => self.with(node, |n| n.models = models.clone()),
            (_, Reply::Workers { workers }) => self.with(node, |n| {
                n.workers.clear();
                for w in workers {
                    put_worker(n, w.clone());
                }
            }),
            (_, Reply::Status { status }) => self.with(node, |n| {
                n.telemetry = Some(status.telemetry.clone());
                n.workers.clear();
                for w in &status.workers {
                    put_worker(n, w.clone());
                }
            }),
            (_, Reply::Spawned { worker }) => self.with(node, |n| put_worker(n, worker.clone())),
            (_, Reply::Killed { worker }) => self.with(node, |n| {
                n.workers.remove(worker);
            }),
            _ => false,
        }
    }

    /// Every model name any node lists, each once, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.models.iter().map(|m| m.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether any node lists `model` or runs a worker of it.
    pub fn knows(&self, model: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.entry(model).is_some() || n.workers.values().any(|w| n.serves(w, model)))
    }
}

/// Record a worker's new state; an exited worker is gone.
fn put_worker(n: &mut NodeView, w: WorkerInfo) {
    if w.state == WorkerState::Exited {
        n.workers.remove(&w.id);
    } else {
        n.workers.insert(w.id.clone(), w);
    }
}
