//! Placement, as pure functions over the cluster view and the gateway's own count of requests in
//! flight per worker: which worker takes a request, whether a new worker is needed, and which
//! node should load it.
use std::collections::{HashMap, HashSet};

use rbee_proto::session::WorkerInfo;
use rbee_proto::{WorkerId, WorkerState};

use crate::dashboard::state::NodeIdx;
use crate::gateway::cluster::Cluster;

/// A worker, cluster-wide.
pub type Place = (NodeIdx, WorkerId);

/// Requests the gateway has in flight per worker.
pub type Load = HashMap<Place, u32>;

/// Requests the gateway gives worker `w` at once: `slots` when the operator set it, else the
/// sequences the worker decodes at once (its `parallel`, 1 before it reports one).
pub fn capacity(w: &WorkerInfo, slots: Option<u32>) -> u32 {
    slots
        .unwrap_or_else(|| w.summary.as_ref().map_or(1, |m| m.slots()))
        .max(1)
}

/// The serving worker of `model` with a free slot and the smallest share of its slots in use
/// (ours, then what its heartbeat reports, then node order), skipping `exclude`.
pub fn pick_worker(
    cluster: &Cluster,
    load: &Load,
    slots: Option<u32>,
    model: &str,
    exclude: &[Place],
) -> Option<Place> {
    let mut best: Option<(u64, u32, Place)> = None;
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !node.up {
            continue;
        }
        for w in node.workers.values() {
            if !w.state.is_serving() || !node.serves(w, model) {
                continue;
            }
            let place = (i, w.id.clone());
            if exclude.contains(&place) {
                continue;
            }
            let ours = load.get(&place).copied().unwrap_or(0);
            let cap = capacity(w, slots);
            if ours >= cap {
                continue;
            }
            let key = (u64::from(ours) * 1000 / u64::from(cap), w.in_flight);
            if best.as_ref().is_none_or(|(a, b, _)| key < (*a, *b)) {
                best = Some((key.0, key.1, place));
            }
        }
    }
    best.map(|(_, _, p)| p)
}

/// What can still serve `model` without a new worker: serving workers, and workers on their way
/// (starting, loading, or restarting after a crash) on reachable nodes.
#[derive(Debug, Default, PartialEq)]
pub struct Supply {
    /// Workers serving now.
    pub serving: u32,
    /// Of those, the ones with a free slot.
    pub free: u32,
    /// Workers starting, loading or being restarted by their agent.
    pub coming: u32,
}

/// Count the workers of `model` on reachable nodes, leaving out `exclude` (workers a request
/// already failed on).
pub fn supply(
    cluster: &Cluster,
    load: &Load,
    slots: Option<u32>,
    model: &str,
    exclude: &[Place],
) -> Supply {
    let mut s = Supply::default();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !node.up {
            continue;
        }
        for w in node.workers.values() {
            if !node.serves(w, model) || exclude.contains(&(i, w.id.clone())) {
                continue;
            }
            match w.state {
                WorkerState::Ready | WorkerState::Busy => {
                    s.serving += 1;
                    let ours = load.get(&(i, w.id.clone())).copied().unwrap_or(0);
                    if ours < capacity(w, slots) {
                        s.free += 1;
                    }
                }
                WorkerState::Starting
                | WorkerState::Loading
                | WorkerState::Crashed
                | WorkerState::BackingOff => s.coming += 1,
                WorkerState::Stopping | WorkerState::Exited | WorkerState::Failed => {}
            }
        }
    }
    s
}

/// The node that should load a new worker of `model`: reachable, lists the model, runs no
/// worker of it yet (a failed one counts: it failed there), not in `refused`; the one with the
/// most free memory on `device`, then the fewest workers, then config order. The agent's
/// admission has the last word: a node that refuses is put in `refused` and the next is asked.
pub fn spawn_node(
    cluster: &Cluster,
    model: &str,
    refused: &HashSet<NodeIdx>,
    device: &str,
) -> Option<NodeIdx> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            n.up && !refused.contains(i)
                && n.entry(model).is_some()
                && !n
                    .workers
                    .values()
                    .any(|w| w.state != WorkerState::Stopping && n.serves(w, model))
        })
        .max_by_key(|(i, n)| {
            (
                n.free_memory(device),
                usize::MAX - n.workers.len(),
                usize::MAX - i,
            )
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::cluster::NodeView;
    use rbee_proto::session::{ModelEntry, Telemetry, WorkerInfo};

    fn worker(id: &str, state: WorkerState, in_flight: u32) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            model: "/m/a.gguf".into(),
            device: "cpu".into(),
            state,
            pid: None,
            restarts: 0,
            last_exit: None,
            summary: None,
            heartbeat_age_ms: None,
            tokens_per_s: 0.0,
            rss_bytes: 0,
            vram_bytes: 0,
            in_flight,
            detail: String::new(),
        }
    }

    fn node(name: &str, free: u64, workers: Vec<WorkerInfo>) -> NodeView {
        NodeView {
            name: name.into(),
            up: true,
            reason: String::new(),
            models: vec![ModelEntry {
                name: "a".into(),
                reference: "/m/a.gguf".into(),
                size_bytes: 1,
                format: "gguf".into(),
            }],
            workers: workers.into_iter().map(|w| (w.id.clone(), w)).collect(),
            telemetry: Some(Telemetry {
                mem_total_bytes: free,
                ..Telemetry::default()
            }),
        }
    }

    #[test]
    fn least_loaded_free_worker_wins() {
        let c = Cluster {
            nodes: vec![
                node("n0", 1, vec![worker("w1", WorkerState::Busy, 1)]),
                node("n1", 1, vec![worker("w1", WorkerState::Ready, 0)]),
            ],
        };
        let mut load = Load::new();
        load.insert((0, "w1".into()), 1);
        assert_eq!(
            pick_worker(&c, &load, Some(2), "a", &[]),
            Some((1, "w1".into()))
        );
        load.insert((1, "w1".into()), 2);
        assert_eq!(
            pick_worker(&c, &load, Some(2), "a", &[]),
            Some((0, "w1".into()))
        );
        assert_eq!(
            pick_worker(&c, &load, Some(2), "a", &[(0, "w1".into())]),
            None
        );
        assert_eq!(
            pick_worker(&c, &load, Some(2), "a.gguf", &[]),
            Some((0, "w1".into()))
        );
        assert_eq!(pick_worker(&c, &load, Some(2), "b", &[]), None);
    }

    #[test]
    fn a_worker_with_more_slots_takes_more_requests() {
        let mut wide = worker("w2", WorkerState::Ready, 2);
        wide.summary = Some(rbee_proto::ModelSummary {
            name: "a".into(),
            parallel: 4,
            ..Default::default()
        });
        let c = Cluster {
            nodes: vec![
                node("n0", 1, vec![worker("w1", WorkerState::Ready, 0)]),
                node("n1", 1, vec![wide]),
            ],
        };
        assert_eq!(capacity(&c.nodes[0].workers["w1"], None), 1);
        assert_eq!(capacity(&c.nodes[1].workers["w2"], None), 4);
        assert_eq!(capacity(&c.nodes[1].workers["w2"], Some(2)), 2);
        let mut load = Load::new();
        load.insert((1, "w2".into()), 2);
        // Two of four slots in use (half) beat one of one (full); the 1-slot worker is skipped.
        load.insert((0, "w1".into()), 1);
        assert_eq!(
            pick_worker(&c, &load, None, "a", &[]),
            Some((1, "w2".into()))
        );
        load.insert((1, "w2".into()), 4);
        assert_eq!(pick_worker(&c, &load, None, "a", &[]), None);
        let s = supply(&c, &load, None, "a", &[]);
        assert_eq!((s.serving, s.free), (2, 0));
        load.insert((0, "w1".into()), 0);
        assert_eq!(
            pick_worker(&c, &load, None, "a", &[]),
            Some((0, "w1".into()))
        );
    }

    #[test]
    fn spawn_goes_where_the_model_is_not_yet_and_memory_is() {
        let mut c = Cluster {
            nodes: vec![
                node("n0", 10, vec![worker("w1", WorkerState::Loading, 0)]),
                node("n1", 5, vec![]),
                node("n2", 8, vec![]),
            ],
        };
        assert_eq!(spawn_node(&c, "a", &HashSet::new(), "cpu"), Some(2));
        assert_eq!(spawn_node(&c, "a", &HashSet::from([2]), "cpu"), Some(1));
        c.nodes[1].up = false;
        assert_eq!(spawn_node(&c, "a", &HashSet::from([2]), "cpu"), None);
        let s = supply(&c, &Load::new(), Some(2), "a", &[]);
        c.nodes[0].telemetry.as_mut().unwrap().gpus = vec![
            rbee_proto::session::GpuTelemetry {
                index: 0,
                mem_total_bytes: 8,
                mem_used_bytes: 7,
                ..Default::default()
            },
            rbee_proto::session::GpuTelemetry {
                index: 1,
                mem_total_bytes: 8,
                mem_used_bytes: 1,
                ..Default::default()
            },
        ];
        assert_eq!(c.nodes[0].free_memory("cuda:0"), 1);
        assert_eq!(
            c.nodes[0].free_memory("auto"),
            7,
            "the GPU with the most free memory"
        );
        assert_eq!(
            s,
            Supply {
                serving: 0,
                free: 0,
                coming: 1
            }
        );
    }
}
