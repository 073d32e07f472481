//! `/metrics` across the cluster: ask every node that is up for its exposition over its session
//! (`Request::Metrics`) and hand each answer to the HTTP side as it comes; a node that is down,
//! or whose session drops, is answered at once with why.
use super::*;
use crate::gateway::job::ScrapeMsg;

impl Hub {
    /// Start one scrape: the snapshot first, then one `ScrapeMsg::Node` per node.
    pub(super) fn scrape(&mut self, to: mpsc::UnboundedSender<ScrapeMsg>) {
        let _ = to.send(ScrapeMsg::Snapshot(Box::new(self.snapshot())));
        for node in 0..self.cluster.nodes.len() {
            if !self.cluster.nodes[node].up {
                let _ = to.send(ScrapeMsg::Node(node, Err("no session".into())));
                continue;
            }
            let effect = Effect::Request {
                node,
                request: Request::Metrics,
            };
            if self.effects[node].try_send(effect).is_ok() {
                self.scrapes.entry(node).or_default().push_back(to.clone());
            } else {
                let _ = to.send(ScrapeMsg::Node(node, Err("session busy".into())));
            }
        }
    }

    /// A node answered `Request::Metrics` (or its session could not).
    pub(super) fn scraped(&mut self, node: NodeIdx, result: Result<String, String>) {
        if let Some(to) = self.scrapes.get_mut(&node).and_then(VecDeque::pop_front) {
            let _ = to.send(ScrapeMsg::Node(node, result));
        }
    }

    /// A node's session dropped: its scrapes in flight get no answer.
    pub(super) fn scrapes_lost(&mut self, node: NodeIdx, reason: &str) {
        for to in self.scrapes.remove(&node).unwrap_or_default() {
            let _ = to.send(ScrapeMsg::Node(node, Err(reason.to_string())));
        }
    }
}
