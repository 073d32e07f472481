//! Fixed dashboard states for rendering and update tests: three nodes (two GPUs, CPU only,
//! unreachable) and workers in every interesting state. No clocks: `NOW` is fixed.
#![allow(dead_code)]

pub mod run;
pub mod tmux;

use rbee_proto::session::{AuditEntry, Event, GpuTelemetry, ModelEntry, Telemetry, WorkerInfo};
use rbee_proto::{ModelSummary, WorkerState};
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::state::{Conn, EventKind, History, NodeState, State, WorkerView};

pub const NOW: u64 = 1_700_000_000_000;
pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

pub fn worker(id: &str, model: &str, device: &str, state: WorkerState) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        model: model.into(),
        device: device.into(),
        state,
        pid: Some(4000 + id.len() as u32),
        restarts: 0,
        last_exit: None,
        summary: None,
        heartbeat_age_ms: Some(1200),
        tokens_per_s: 0.0,
        rss_bytes: 412 * MIB,
        vram_bytes: 0,
        in_flight: 0,
        detail: String::new(),
    }
}

pub fn summary(name: &str, device: &str) -> ModelSummary {
    ModelSummary {
        name: name.into(),
        architecture: "llama".into(),
        context_length: 8192,
        memory_bytes: 98 * MIB,
        device: device.into(),
        family: "llama".into(),
        chat_template: Some("gguf".into()),
        parallel: 4,
    }
}

/// A worker first seen a minute ago whose last heartbeat came `heartbeat_age_ms` before NOW.
fn view(info: WorkerInfo) -> WorkerView {
    let age = info.heartbeat_age_ms;
    let mut v = WorkerView::new(info, NOW - 60_000);
    v.heartbeat_at = age.map(|a| NOW - a);
    v
}

pub fn gpu_node() -> NodeState {
    let mut n = NodeState::new("gpu-a", "ws://127.0.0.1:7733");
    n.conn = Conn::Connected;
    n.agent_version = Some("0.1.0".into());
    n.agent_node = Some("gpu-a.lab".into());
    n.latency_ms = Some(3);
    n.telemetry = Some(two_h100s());
    n.cpu_history = (0..60).map(|i| 10 + (i * 7) % 40).collect();
    n.gpu_history = vec![
        (0..60).map(|i| 30 + i % 25).collect(),
        (0..60).map(|_| 95).collect(),
    ];
    n.tokps_history = (0..60).map(|i| (i * 3) % 50).collect::<History>();
    n.workers = gpu_a_workers();
    n.models = vec![
        ModelEntry {
            name: "SmolLM2-135M-Instruct.Q4_1".into(),
            reference: "/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            size_bytes: 98 * MIB,
            format: "gguf".into(),
        },
        ModelEntry {
            name: "Qwen2.5-0.5B-Instruct.Q8_0".into(),
            reference: "/models/Qwen2.5-0.5B-Instruct.Q8_0.gguf".into(),
            size_bytes: 531 * MIB,
            format: "gguf".into(),
        },
    ];
    n
}

/// gpu-a's telemetry: two H100s, one half full, one nearly full.
fn two_h100s() -> Telemetry {
    Telemetry {
        at: NOW,
        cpu_percent: 23.0,
        mem_total_bytes: 64 * GIB,
        mem_used_bytes: 12 * GIB,
        disk_free_bytes: 400 * GIB,
        gpus: vec![
            GpuTelemetry {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                mem_total_bytes: 80 * GIB,
                mem_used_bytes: 40 * GIB,
                utilization_percent: 71,
                temperature_c: 64,
                power_watts: 412.0,
                processes: vec![],
            },
            GpuTelemetry {
                index: 1,
                name: "NVIDIA H100 80GB HBM3".into(),
                mem_total_bytes: 80 * GIB,
                mem_used_bytes: 76 * GIB,
                utilization_percent: 5,
                temperature_c: 41,
                power_watts: 90.0,
                processes: vec![],
            },
        ],
        gpu_status: String::new(),
        backends: vec!["cpu".into(), "cuda".into()],
    }
}

/// gpu-a's workers: ready, loading, failed (with a history and a log), busy.
fn gpu_a_workers() -> Vec<WorkerView> {
    let mut w1 = worker(
        "w1",
        "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "cuda:0",
        WorkerState::Ready,
    );
    w1.tokens_per_s = 41.5;
    w1.vram_bytes = 1200 * MIB;
    w1.summary = Some(summary("SmolLM2-135M-Instruct", "cuda:0"));
    let mut w2 = worker(
        "w2",
        "/models/Qwen2.5-0.5B-Instruct.Q8_0.gguf",
        "cuda:1",
        WorkerState::Loading,
    );
    w2.rss_bytes = 96 * MIB;
    w2.detail = "loading weights 45%".into();
    w2.heartbeat_age_ms = None;
    w2.pid = Some(4242);
    let mut w3 = worker("w3", "/models/broken.gguf", "cuda:0", WorkerState::Failed);
    w3.restarts = 5;
    w3.pid = None;
    w3.last_exit = Some("exit status 101: corrupt weights (bad magic)".into());
    w3.detail = "circuit breaker open: 5 failures in 300 s".into();
    w3.heartbeat_age_ms = None;
    w3.rss_bytes = 0;
    let mut w10 = worker(
        "w10",
        "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "cuda:0",
        WorkerState::Busy,
    );
    w10.tokens_per_s = 38.2;
    w10.in_flight = 2;

    let mut v1 = view(w1);
    v1.tokps = (0..60).map(|i| 30 + (i * 5) % 15).collect();
    v1.spawn_to_ready_ms = Some(640);
    v1.log = [
        "loading /models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "model ready: llama, ctx 8192",
        "generated 128 tokens in 3.1 s",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut v3 = view(w3);
    // A realistic history: starting, loading, crashed, backing off … failed.
    v3.states.clear();
    for (i, (st, detail)) in [
        (WorkerState::Starting, ""),
        (WorkerState::Loading, "reading header"),
        (WorkerState::Crashed, "exit status 101"),
        (WorkerState::BackingOff, "restart 5 in 16 s"),
        (WorkerState::Failed, "circuit breaker open"),
    ]
    .into_iter()
    .enumerate()
    {
        v3.states
            .push_back(rbee_tui::dashboard::state::StateChange {
                at: NOW - 50_000 + i as u64 * 10_000,
                state: st,
                detail: detail.into(),
            });
    }
    v3.log = [
        "error: invalid gguf magic 0x00000000",
        "rbee-worker: model load failed: corrupt weights",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    vec![v1, view(w2), v3, view(w10)]
}

pub fn cpu_node() -> NodeState {
    let mut n = NodeState::new("cpu-b", "ws://127.0.0.1:7734");
    n.conn = Conn::Connected;
    n.agent_version = Some("0.1.0".into());
    n.agent_node = Some("laptop".into());
    n.latency_ms = Some(1);
    n.telemetry = Some(Telemetry {
        at: NOW,
        cpu_percent: 87.0,
        mem_total_bytes: 16 * GIB,
        mem_used_bytes: 14 * GIB,
        disk_free_bytes: 20 * GIB,
        gpus: vec![],
        gpu_status: "NVML not available: libnvidia-ml.so.1 not found".into(),
        backends: vec!["cpu".into()],
    });
    let mut w = worker(
        "w1",
        "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "cpu",
        WorkerState::Ready,
    );
    w.tokens_per_s = 12.3;
    n.workers = vec![view(w)];
    n
}

pub fn down_node() -> NodeState {
    let mut n = NodeState::new("gpu-c", "ws://10.0.0.3:7733");
    n.conn = Conn::Unreachable {
        reason:
            "cannot reach agent at ws://10.0.0.3:7733: IO error: Connection refused (os error 111)"
                .into(),
        retry_in_ms: 16_000,
        since: NOW - 65_000,
    };
    n.agent_version = Some("0.1.0".into());
    let mut w = worker(
        "w1",
        "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "cuda:0",
        WorkerState::Ready,
    );
    w.heartbeat_age_ms = Some(70_000);
    n.workers = vec![view(w)];
    n
}

/// Three nodes, some events, on the Nodes screen.
pub fn sample() -> State {
    let mut s = State::new(vec![gpu_node(), cpu_node(), down_node()]);
    s.now = NOW - 40_000;
    s.push_event(
        "gpu-a",
        EventKind::Info,
        "connected to gpu-a.lab (agent 0.1.0)",
    );
    s.now = NOW - 30_000;
    s.push_event(
        "gpu-a",
        EventKind::Audit,
        "spawn w2: /models/Qwen2.5-0.5B-Instruct.Q8_0.gguf on cuda:1 (from 127.0.0.1:50312)",
    );
    s.now = NOW - 20_000;
    s.push_event(
        "gpu-a",
        EventKind::Error,
        "w3 backing_off → failed: exit status 101: corrupt weights (bad magic)",
    );
    s.now = NOW - 5_000;
    s.push_event(
        "gpu-c",
        EventKind::Error,
        "unreachable: cannot reach agent at ws://10.0.0.3:7733: Connection refused",
    );
    s.now = NOW;
    s.push_event("gpu-a", EventKind::State, "w2 starting → loading");
    s.dirty = false;
    s
}

pub fn audit(action: &str) -> Event {
    Event::Audit {
        entry: AuditEntry {
            at: NOW,
            action: action.into(),
            peer: None,
            who: None,
            worker: None,
            detail: String::new(),
        },
    }
}

pub fn agent_event(node: usize, event: Event) -> Action {
    Action::AgentEvent { node, event }
}

/// The first action `f` accepts within `limit`, skipping the others; panics naming `what`.
pub async fn next_action<T>(
    rx: &mut tokio::sync::mpsc::Receiver<Action>,
    limit: std::time::Duration,
    what: &str,
    f: impl Fn(&Action) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let a = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
            .expect("session ended");
        if let Some(v) = f(&a) {
            return v;
        }
    }
}
