//! Counters, the snapshot the read-only endpoints are built from, `/metrics` in Prometheus' text
//! format, and the audit line written for every request.
use std::io::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::gateway::cluster::Cluster;

/// Totals since the gateway started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Generation requests accepted for scheduling.
    pub requests: u64,
    /// Answered in full.
    pub ok: u64,
    /// Failed on a node or refused after scheduling (404, 503, 504, …), 429s excluded.
    pub failed: u64,
    /// Refused because the wait queue was full (429).
    pub queue_full: u64,
    /// The client went away first.
    pub cancelled: u64,
    /// Requests moved to another worker after a failure before their first token.
    pub retries: u64,
    /// Completion tokens of the requests answered in full.
    pub tokens: u64,
    /// Workers the gateway asked a node to start.
    pub spawns: u64,
    /// Workers the gateway unloaded after their keep-alive.
    pub unloads: u64,
    /// Sum of queue waits of started requests, in milliseconds (with `started`, the mean).
    pub queue_ms_sum: u64,
    /// Requests that reached a worker.
    pub started: u64,
}

/// Everything the read-only endpoints show, taken in one go from the hub.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The nodes, their models and workers.
    pub cluster: Cluster,
    /// Requests waiting for a worker.
    pub waiting: usize,
    /// Requests on a worker now.
    pub running: usize,
    /// Workers started by the gateway and still kept: (node index, worker id).
    pub owned: Vec<(usize, String)>,
    /// Totals.
    pub stats: Stats,
}

impl Snapshot {
    /// The gateway's own metrics, Prometheus' text format (0.0.4), through a `prometheus-client`
    /// registry filled from this snapshot (the hub keeps plain totals; a registry per scrape costs
    /// microseconds).
    pub fn metrics(&self) -> String {
        use prometheus_client::encoding::prometheus_text;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::{Registry, Unit};
        let s = &self.stats;
        let mut r = Registry::with_prefix("rbee_gateway");
        let mut counter = |name: &str, help: &str, v: u64| {
            let c: Counter = Counter::default();
            c.inc_by(v);
            r.register(name, help, c);
        };
        counter("requests", "Generation requests accepted", s.requests);
        counter("ok", "Requests answered in full", s.ok);
        counter(
            "failed",
            "Requests that failed or were refused after scheduling",
            s.failed,
        );
        counter(
            "queue_full",
            "Requests refused with 429 (queue full)",
            s.queue_full,
        );
        counter("cancelled", "Requests whose client went away", s.cancelled);
        counter(
            "retries",
            "Requests moved to another worker before their first token",
            s.retries,
        );
        counter(
            "tokens",
            "Completion tokens of requests answered in full",
            s.tokens,
        );
        counter("spawns", "Workers started on demand", s.spawns);
        counter(
            "unloads",
            "Workers unloaded after their keep-alive",
            s.unloads,
        );
        let wait: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        wait.inc_by(s.queue_ms_sum as f64 / 1e3);
        r.register_with_unit(
            "queue_wait",
            "Summed queue wait of started requests",
            Unit::Seconds,
            wait,
        );
        let up = self.cluster.nodes.iter().filter(|n| n.up).count();
        for (name, help, v) in [
            ("waiting", "Requests waiting for a worker", self.waiting),
            ("running", "Requests on a worker", self.running),
            ("nodes_up", "Nodes with a session", up),
        ] {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            r.register(name, help, g);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &r);
        out
    }

    /// `/v1/models`: every model any node lists, with where it is loaded.
    pub fn models(&self) -> Value {
        let data: Vec<Value> = self
            .cluster
            .model_names()
            .into_iter()
            .map(|name| self.model(&name))
            .collect();
        json!({"object": "list", "data": data})
    }

    /// One entry of `/v1/models`.
    pub fn model(&self, name: &str) -> Value {
        let mut nodes = Vec::new();
        let mut loaded = Vec::new();
        for n in &self.cluster.nodes {
            if n.entry(name).is_some() {
                nodes.push(n.name.clone());
            }
            for w in n.workers.values().filter(|w| n.serves(w, name)) {
                loaded.push(
                    json!({"node": n.name, "worker": w.id, "state": w.state.as_str(),
                                   "device": w.device, "in_flight": w.in_flight}),
                );
            }
        }
        json!({"id": name, "object": "model", "created": 0, "owned_by": "rbee",
               "nodes": nodes, "loaded": loaded})
    }
}

/// One line of the gateway's audit log: who asked what and how it went. The key's id, never the
/// key.
#[derive(Debug, Clone, Default)]
pub struct AuditLine {
    /// Unix milliseconds at the end of the request.
    pub at: u64,
    /// Key id, when keys are configured.
    pub key: Option<String>,
    /// The client's address.
    pub client: String,
    /// `chat` or `completion`.
    pub endpoint: &'static str,
    /// The model asked for.
    pub model: String,
    /// Where it ran (empty when it never reached a worker).
    pub node: String,
    /// The worker (empty when none).
    pub worker: String,
    /// `ok`, `cancelled`, or the error code.
    pub outcome: String,
    /// Milliseconds waiting for a worker.
    pub queue_ms: u64,
    /// Milliseconds from arrival to the first token.
    pub ttft_ms: Option<u64>,
    /// Completion tokens (the worker's count) of an answered request.
    pub tokens: u64,
    /// Milliseconds from arrival to the end.
    pub total_ms: u64,
}

impl AuditLine {
    /// The line as JSON.
    pub fn json(&self) -> String {
        json!({
            "at": self.at, "key": self.key, "client": self.client, "endpoint": self.endpoint,
            "model": self.model, "node": self.node, "worker": self.worker, "outcome": self.outcome,
            "queue_ms": self.queue_ms, "ttft_ms": self.ttft_ms, "tokens": self.tokens,
            "total_ms": self.total_ms,
        })
        .to_string()
    }
}

/// The audit log file, opened for appending.
pub struct AuditLog {
    file: Option<std::fs::File>,
}

impl AuditLog {
    /// Append to `path` (created with its directory when missing); `None` logs to tracing only.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )
            }
        };
        Ok(Self { file })
    }

    /// Record one request.
    pub fn write(&mut self, line: &AuditLine) {
        tracing::info!(target: "rbee_gateway::audit", "{}", line.json());
        if let Some(f) = &mut self.file {
            if let Err(e) = writeln!(f, "{}", line.json()) {
                tracing::warn!("cannot write the gateway audit log: {e}");
            }
        }
    }
}
