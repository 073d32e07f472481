//! Counters for `GET /metrics` in the Prometheus text format.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The agent's counters, rendered on `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    restarts: u64,
    spawn_to_ready_sum: f64,
    spawn_to_ready_count: u64,
    infer_latency_sum: f64,
    infer_count: u64,
    tokens: u64,
    errors: BTreeMap<String, u64>,
    sessions: u64,
    dropped: BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// An automatic worker restart.
    pub fn restart(&self) {
        self.inner.lock().unwrap().restarts += 1;
    }
    /// A worker became ready `secs` after its spawn.
    pub fn ready(&self, secs: f64) {
        let mut m = self.inner.lock().unwrap();
        m.spawn_to_ready_sum += secs;
        m.spawn_to_ready_count += 1;
    }
    /// An inference finished after `secs` with `tokens` tokens.
    pub fn infer_done(&self, secs: f64, tokens: u64) {
        let mut m = self.inner.lock().unwrap();
        m.infer_latency_sum += secs;
        m.infer_count += 1;
        m.tokens += tokens;
    }
    /// An error of `kind` was answered.
    pub fn error(&self, kind: &str) {
        *self
            .inner
            .lock()
            .unwrap()
            .errors
            .entry(kind.into())
            .or_default() += 1;
    }
    /// A connection was closed by a limit (`evicted`, `handshake_timeout`, `head_too_large`,
    /// `too_many_sessions`, `write_stall`).
    pub fn dropped(&self, reason: &'static str) {
        *self
            .inner
            .lock()
            .unwrap()
            .dropped
            .entry(reason)
            .or_default() += 1;
    }
    /// A session was authenticated.
    pub fn session(&self) {
        self.inner.lock().unwrap().sessions += 1;
    }

    /// Render with the current count of workers per state.
    pub fn render(&self, workers_by_state: &BTreeMap<String, u64>) -> String {
        let m = self.inner.lock().unwrap();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP rbee_workers Workers by state.\n# TYPE rbee_workers gauge"
        );
        for (state, n) in workers_by_state {
            let _ = writeln!(s, "rbee_workers{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP rbee_worker_restarts_total Automatic worker restarts.\n# TYPE rbee_worker_restarts_total counter\nrbee_worker_restarts_total {}", m.restarts);
        let _ = writeln!(s, "# HELP rbee_spawn_to_ready_seconds Time from spawn to the worker's Ready.\n# TYPE rbee_spawn_to_ready_seconds summary\nrbee_spawn_to_ready_seconds_sum {}\nrbee_spawn_to_ready_seconds_count {}", m.spawn_to_ready_sum, m.spawn_to_ready_count);
        let _ = writeln!(s, "# HELP rbee_inference_seconds Inference latency, request to last token.\n# TYPE rbee_inference_seconds summary\nrbee_inference_seconds_sum {}\nrbee_inference_seconds_count {}", m.infer_latency_sum, m.infer_count);
        let _ = writeln!(s, "# HELP rbee_generated_tokens_total Tokens streamed to sessions.\n# TYPE rbee_generated_tokens_total counter\nrbee_generated_tokens_total {}", m.tokens);
        let _ = writeln!(s, "# HELP rbee_sessions_total Authenticated sessions accepted.\n# TYPE rbee_sessions_total counter\nrbee_sessions_total {}", m.sessions);
        let _ = writeln!(
            s,
            "# HELP rbee_errors_total Errors answered, by kind.\n# TYPE rbee_errors_total counter"
        );
        for (kind, n) in &m.errors {
            let _ = writeln!(s, "rbee_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP rbee_connections_dropped_total Connections closed by a limit, by reason.\n# TYPE rbee_connections_dropped_total counter"
        );
        for (reason, n) in &m.dropped {
            let _ = writeln!(
                s,
                "rbee_connections_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        s
    }
}
