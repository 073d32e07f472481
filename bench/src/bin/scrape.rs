//! Scrape cost of the cluster's one metrics endpoint (issue 13): what the gateway's `/metrics`
//! costs for NODES agents × 8 workers. Each agent's exposition is rendered by the agent's real
//! metrics code (`rbee_agent::metrics`, every family filled: 8 workers of 4 models, 2 GPUs, a few
//! inferences per model), then the gateway's real merge (`rbee_tui::gateway::relay::render`)
//! labels and joins NODES of them. The session round trips are not in this figure (they run in
//! parallel, one per node, and cost the agents, not the gateway's CPU).
//!
//! Usage: `cargo run --release -p rbee-bench --bin scrape -- [NODES] [ITERATIONS]` (100, 50).
use std::time::{Duration, Instant};

use rbee_agent::metrics::{Metrics, Snapshot};
use rbee_bench::measure::{ms, CpuTime};
use rbee_proto::session::{GpuTelemetry, Telemetry, WorkerInfo};
use rbee_proto::{FinishReason, ModelSummary, Usage, WorkerState};
use rbee_tui::gateway::relay::{render, NodeScrape};

/// One agent's exposition with every family filled.
fn agent_exposition() -> (String, Duration) {
    let metrics = Metrics::new();
    let models = ["smollm2-135m", "qwen2.5-0.5b", "gemma-3-270m", "phi-3-mini"];
    let workers: Vec<WorkerInfo> = (0..8)
        .map(|i| WorkerInfo {
            id: format!("w{i}"),
            model: models[i % 4].into(),
            device: format!("cuda:{}", i % 2),
            state: if i == 7 {
                WorkerState::Busy
            } else {
                WorkerState::Ready
            },
            pid: Some(1000 + i as u32),
            restarts: 0,
            last_exit: None,
            summary: Some(ModelSummary {
                name: models[i % 4].into(),
                ..Default::default()
            }),
            heartbeat_age_ms: Some(100),
            tokens_per_s: 50.0,
            rss_bytes: 1 << 30,
            vram_bytes: 2 << 30,
            in_flight: 1,
            detail: String::new(),
        })
        .collect();
    for m in models {
        metrics.ready(m, 0.8);
        for _ in 0..5 {
            let usage = Usage {
                prompt_tokens: 20,
                generated_tokens: 64,
                time_to_first_token_ms: 60.0,
                prompt_tokens_per_s: 300.0,
                decode_tokens_per_s: 50.0,
                total_ms: 1300.0,
            };
            metrics.infer_done(m, 1.3, 64, FinishReason::Eos, &usage);
        }
        metrics.restart(m);
    }
    metrics.error("busy");
    let gpu = |index| GpuTelemetry {
        index,
        name: "NVIDIA H100".into(),
        mem_total_bytes: 80 << 30,
        mem_used_bytes: 20 << 30,
        utilization_percent: 50,
        temperature_c: 60,
        power_watts: 300.0,
        processes: Vec::new(),
    };
    let telemetry = Telemetry {
        at: 0,
        cpu_percent: 30.0,
        mem_total_bytes: 256 << 30,
        mem_used_bytes: 64 << 30,
        disk_free_bytes: 1 << 40,
        gpus: vec![gpu(0), gpu(1)],
        gpu_status: String::new(),
        backends: vec!["cpu".into()],
    };
    let snap = Snapshot {
        workers: &workers,
        telemetry: &telemetry,
        active_sessions: 2,
    };
    let t = Instant::now();
    let text = metrics.render(&snap);
    (text, t.elapsed())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let (text, _) = agent_exposition();
    let mut agent_render: Vec<Duration> = (0..iterations).map(|_| agent_exposition().1).collect();
    agent_render.sort();
    let scrapes: Vec<NodeScrape> = (0..nodes)
        .map(|i| NodeScrape {
            node: format!("gpu-{i:03}"),
            text: Ok(text.clone()),
        })
        .collect();
    let mut merged = String::new();
    let mut walls = Vec::with_capacity(iterations);
    let cpu0 = CpuTime::of_self();
    for _ in 0..iterations {
        let t = Instant::now();
        merged = render(&scrapes, "");
        walls.push(t.elapsed());
    }
    let cpu = CpuTime::of_self().since(&cpu0).total() / iterations as u32;
    walls.sort();
    let wall = walls[walls.len() / 2];
    let series = merged
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let share = cpu.as_secs_f64() / 15.0 * 100.0;
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| one agent's render (8 workers, 2 GPUs), median | {:.3} ms, {} series | |",
        ms(agent_render[agent_render.len() / 2]),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    println!(
        "| cluster merge, {nodes} nodes: wall (median of {iterations}) / CPU per scrape | {:.2} ms / {:.2} ms | < 50 ms |",
        ms(wall),
        ms(cpu)
    );
    println!("| CPU at a 15 s scrape interval | {share:.3} % of a core | < 1 % |");
    println!(
        "| series / bytes of the merged exposition | {series} / {:.1} MiB | |",
        merged.len() as f64 / (1 << 20) as f64
    );
}
