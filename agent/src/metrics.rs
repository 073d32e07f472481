//! The agent's Prometheus metrics, kept in a `prometheus-client` registry and rendered in
//! Prometheus' text format (0.0.4) for `GET /metrics` and `Request::Metrics`.
//!
//! Events (a restart, a token count, an error) update counters and histograms where they happen;
//! what is a state rather than an event (workers by state, GPU and node resources, sessions,
//! queue depth) is read from a [`Snapshot`] at each render, so a scrape always shows the present.
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use rbee_proto::session::{Telemetry, WorkerInfo};
use rbee_proto::{FinishReason, Usage};

type L1 = [(&'static str, String); 1];
type L3 = [(&'static str, String); 3];
type F64Gauge = Gauge<f64, AtomicU64>;
type HistFamily = Family<L1, Histogram, fn() -> Histogram>;

/// What the render reads at scrape time: the states, not the events.
pub struct Snapshot<'a> {
    /// Every worker of the node.
    pub workers: &'a [WorkerInfo],
    /// The latest telemetry sample.
    pub telemetry: &'a Telemetry,
    /// Authenticated sessions open now.
    pub active_sessions: u64,
}

/// The agent's metrics: counters and histograms updated where things happen, gauges set from a
/// [`Snapshot`] when rendered.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    /// Serialises renders: the state gauges are cleared and refilled per render.
    render: Mutex<()>,
    restarts: Family<L1, Counter>,
    breaker_trips: Family<L1, Counter>,
    errors: Family<L1, Counter>,
    tokens: Family<L1, Counter>,
    requests: Family<[(&'static str, String); 2], Counter>,
    dropped: Family<L1, Counter>,
    sessions: Counter,
    spawn_to_ready: HistFamily,
    ttft: HistFamily,
    duration: HistFamily,
    decode_rate: HistFamily,
    workers: Family<L3, Gauge>,
    queue_depth: Family<L3, Gauge>,
    gpu: GpuGauges,
    node_cpu: F64Gauge,
    node_mem_total: Gauge,
    node_mem_used: Gauge,
    node_disk_free: Gauge,
    uptime: F64Gauge,
    active_sessions: Gauge,
}

/// Per-GPU gauges, labelled `gpu` (the NVML index, as `cuda:N` names it) and `name`.
#[derive(Default)]
struct GpuGauges {
    mem_used: Family<[(&'static str, String); 2], Gauge>,
    mem_total: Family<[(&'static str, String); 2], Gauge>,
    utilization: Family<[(&'static str, String); 2], F64Gauge>,
    temperature: Family<[(&'static str, String); 2], Gauge>,
    power: Family<[(&'static str, String); 2], F64Gauge>,
}

fn spawn_buckets() -> Histogram {
    // 0.1 s … 205 s: a small CPU model loads in under a second, a large one on a slow disk in minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 12))
}
fn ttft_buckets() -> Histogram {
    // 5 ms … 41 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}
fn duration_buckets() -> Histogram {
    // 50 ms … 410 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}
fn rate_buckets() -> Histogram {
    // 1 … 2048 tokens/s.
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, the build info set, the uptime clock started.
    #[allow(clippy::too_many_lines)] // one flat list of registrations
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("rbee");
        let m = Self {
            registry: Registry::default(),
            started: Instant::now(),
            render: Mutex::new(()),
            restarts: Family::default(),
            breaker_trips: Family::default(),
            errors: Family::default(),
            tokens: Family::default(),
            requests: Family::default(),
            dropped: Family::default(),
            sessions: Counter::default(),
            spawn_to_ready: Family::new_with_constructor(spawn_buckets),
            ttft: Family::new_with_constructor(ttft_buckets),
            duration: Family::new_with_constructor(duration_buckets),
            decode_rate: Family::new_with_constructor(rate_buckets),
            workers: Family::default(),
            queue_depth: Family::default(),
            gpu: GpuGauges::default(),
            node_cpu: F64Gauge::default(),
            node_mem_total: Gauge::default(),
            node_mem_used: Gauge::default(),
            node_disk_free: Gauge::default(),
            uptime: F64Gauge::default(),
            active_sessions: Gauge::default(),
        };
        r.register(
            "agent_build",
            "The agent's version",
            Info::new([("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        r.register_with_unit(
            "agent_uptime",
            "Time since the agent started",
            Unit::Seconds,
            m.uptime.clone(),
        );
        r.register(
            "workers",
            "Workers by state, model and device",
            m.workers.clone(),
        );
        r.register(
            "worker_queue_depth",
            "Requests a worker holds (running and queued), by worker",
            m.queue_depth.clone(),
        );
        r.register(
            "worker_restarts",
            "Automatic worker restarts after a crash, by model",
            m.restarts.clone(),
        );
        r.register(
            "worker_breaker_trips",
            "Circuit breaker trips (a worker failed too often and was left failed), by model",
            m.breaker_trips.clone(),
        );
        r.register(
            "errors",
            "Errors answered or seen, by kind (the protocol's error code, or what failed)",
            m.errors.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens streamed to sessions, by model",
            m.tokens.clone(),
        );
        r.register(
            "requests",
            "Inference requests by model and outcome (the finish reason, or error)",
            m.requests.clone(),
        );
        r.register(
            "connections_dropped",
            "Connections closed by a limit, by reason",
            m.dropped.clone(),
        );
        r.register(
            "sessions",
            "Authenticated sessions accepted",
            m.sessions.clone(),
        );
        r.register(
            "sessions_active",
            "Authenticated sessions open now",
            m.active_sessions.clone(),
        );
        r.register_with_unit(
            "spawn_to_ready",
            "Time from a worker's spawn to its Ready, by model",
            Unit::Seconds,
            m.spawn_to_ready.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from a request reaching the worker to its first token, by model",
            Unit::Seconds,
            m.ttft.clone(),
        );
        r.register_with_unit(
            "inference_duration",
            "Inference latency as the agent sees it, request to last token, by model",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "decode_tokens_per_second",
            "Decode speed of each finished generation, by model",
            m.decode_rate.clone(),
        );
        m.gpu.register(&mut r);
        r.register(
            "node_cpu_usage_cores",
            "CPU in use on the node, in cores (1.0 = one core busy)",
            m.node_cpu.clone(),
        );
        r.register_with_unit(
            "node_memory_total",
            "Physical memory of the node",
            Unit::Bytes,
            m.node_mem_total.clone(),
        );
        r.register_with_unit(
            "node_memory_used",
            "Memory in use on the node",
            Unit::Bytes,
            m.node_mem_used.clone(),
        );
        r.register_with_unit(
            "node_model_store_free",
            "Free disk space where the node keeps its models",
            Unit::Bytes,
            m.node_disk_free.clone(),
        );
        Self { registry: r, ..m }
    }

    /// An automatic worker restart of a worker of `model`.
    pub fn restart(&self, model: &str) {
        self.restarts
            .get_or_create(&[("model", model.into())])
            .inc();
    }
    /// The circuit breaker opened for a worker of `model`.
    pub fn breaker_trip(&self, model: &str) {
        self.breaker_trips
            .get_or_create(&[("model", model.into())])
            .inc();
    }
    /// A worker of `model` became ready `secs` after its spawn.
    pub fn ready(&self, model: &str, secs: f64) {
        self.spawn_to_ready
            .get_or_create(&[("model", model.into())])
            .observe(secs);
    }
    /// An inference on `model` finished after `secs` with `tokens` tokens streamed, for `reason`.
    pub fn infer_done(
        &self,
        model: &str,
        secs: f64,
        tokens: u64,
        reason: FinishReason,
        usage: &Usage,
    ) {
        let l = [("model", model.to_string())];
        self.duration.get_or_create(&l).observe(secs);
        self.tokens.get_or_create(&l).inc_by(tokens);
        if usage.generated_tokens > 0 {
            self.ttft
                .get_or_create(&l)
                .observe(usage.time_to_first_token_ms / 1e3);
        }
        if usage.decode_tokens_per_s > 0.0 && usage.decode_tokens_per_s.is_finite() {
            self.decode_rate
                .get_or_create(&l)
                .observe(usage.decode_tokens_per_s);
        }
        let outcome = match reason {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::ContextFull => "context_full",
        };
        self.requests
            .get_or_create(&[("model", model.into()), ("outcome", outcome.into())])
            .inc();
    }
    /// An inference on `model` ended with an error of `kind` after `tokens` tokens.
    pub fn infer_failed(&self, model: &str, kind: &str, tokens: u64) {
        self.error(kind);
        self.tokens
            .get_or_create(&[("model", model.into())])
            .inc_by(tokens);
        self.requests
            .get_or_create(&[("model", model.into()), ("outcome", "error".into())])
            .inc();
    }
    /// An error of `kind` was answered.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&[("kind", kind.into())]).inc();
    }
    /// A connection was closed by a limit (`evicted`, `handshake_timeout`, `head_too_large`,
    /// `too_many_sessions`, `write_stall`).
    pub fn dropped(&self, reason: &'static str) {
        self.dropped
            .get_or_create(&[("reason", reason.into())])
            .inc();
    }
    /// A session was authenticated.
    pub fn session(&self) {
        self.sessions.inc();
    }

    /// The exposition in Prometheus' text format (0.0.4), state gauges set from `snap`.
    pub fn render(&self, snap: &Snapshot<'_>) -> String {
        let _one = self.render.lock().unwrap_or_else(|e| e.into_inner());
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.active_sessions.set(gauge_i64(snap.active_sessions));
        self.workers.clear();
        self.queue_depth.clear();
        for w in snap.workers {
            self.workers
                .get_or_create(&[
                    ("state", w.state.to_string()),
                    ("model", w.model.clone()),
                    ("device", w.device.clone()),
                ])
                .inc();
            self.queue_depth
                .get_or_create(&[
                    ("worker", w.id.clone()),
                    ("model", w.model.clone()),
                    ("device", w.device.clone()),
                ])
                .set(i64::from(w.in_flight));
        }
        let t = snap.telemetry;
        self.gpu.set(t);
        self.node_cpu.set(f64::from(t.cpu_percent) / 100.0);
        self.node_mem_total.set(gauge_i64(t.mem_total_bytes));
        self.node_mem_used.set(gauge_i64(t.mem_used_bytes));
        self.node_disk_free.set(gauge_i64(t.disk_free_bytes));
        let mut out = String::with_capacity(8 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl GpuGauges {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "gpu_memory_used",
            "GPU memory in use, by GPU (NVML index) and product name",
            Unit::Bytes,
            self.mem_used.clone(),
        );
        r.register_with_unit(
            "gpu_memory_total",
            "GPU memory on the card",
            Unit::Bytes,
            self.mem_total.clone(),
        );
        r.register_with_unit(
            "gpu_utilization",
            "Busy share of the GPU over the last sample period, 0 to 1",
            Unit::Other("ratio".into()),
            self.utilization.clone(),
        );
        r.register_with_unit(
            "gpu_temperature",
            "GPU core temperature",
            Unit::Celsius,
            self.temperature.clone(),
        );
        r.register_with_unit(
            "gpu_power",
            "GPU power draw",
            Unit::Other("watts".into()),
            self.power.clone(),
        );
    }

    fn set(&self, t: &Telemetry) {
        self.mem_used.clear();
        self.mem_total.clear();
        self.utilization.clear();
        self.temperature.clear();
        self.power.clear();
        for g in &t.gpus {
            let l = [("gpu", g.index.to_string()), ("name", g.name.clone())];
            self.mem_used
                .get_or_create(&l)
                .set(gauge_i64(g.mem_used_bytes));
            self.mem_total
                .get_or_create(&l)
                .set(gauge_i64(g.mem_total_bytes));
            self.utilization
                .get_or_create(&l)
                .set(f64::from(g.utilization_percent) / 100.0);
            self.temperature
                .get_or_create(&l)
                .set(i64::from(g.temperature_c));
            self.power.get_or_create(&l).set(f64::from(g.power_watts));
        }
    }
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
