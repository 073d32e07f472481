//! `status`: every node's connection state, telemetry and workers; exits 0 whatever it finds.
use std::time::Duration;

use rbee_proto::session::{NodeStatus, Reply, Request};
use serde_json::{json, Value};

use super::conn::each_node;
use super::out::{worker_json, Out};
use crate::fmt::no_gpu_text;
use crate::nodes::clock;
use crate::nodes::config::NodeTarget;
use crate::nodes::connect::reason;
use crate::nodes::error::TuiError;

/// Ping and ask every node for its status.
pub(super) async fn run(
    targets: &[NodeTarget],
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let results = each_node(targets, timeout, |s| async move {
        let ping = s
            .client
            .ping(timeout)
            .await
            .map_err(|source| TuiError::Request {
                node: s.name.clone(),
                what: "ping".into(),
                source,
            })?;
        match s.ask(Request::Status, timeout).await? {
            Reply::Status { status } => Ok((ping, s.client.agent_version.clone(), status)),
            other => Err(s.unexpected("status", other)),
        }
    })
    .await;
    let mut arr = Vec::new();
    let mut text = String::new();
    for (target, (name, r)) in targets.iter().zip(results) {
        match r {
            Ok((ping, version, st)) => {
                let latency = ping.rtt.as_millis() as u64;
                text.push_str(&status_line(&name, latency, ping.clock_offset_ms, &st));
                let workers: Vec<Value> =
                    st.workers.iter().map(|w| worker_json(&name, w)).collect();
                arr.push(json!({
                    "name": name,
                    "url": target.display_url(),
                    "state": "connected",
                    "agent_version": version,
                    "agent_node": st.node,
                    "latency_ms": latency,
                    "clock_offset_ms": ping.clock_offset_ms,
                    "clock_warning": clock::warning(ping.clock_offset_ms),
                    "telemetry": st.telemetry,
                    "workers": workers,
                }));
            }
            Err(e) => {
                let why = reason(&e);
                text.push_str(&format!("{name}  unreachable  {why}\n"));
                arr.push(json!({ "name": name, "url": target.display_url(), "state": "unreachable", "error": why }));
            }
        }
    }
    out.print(&text, json!({ "nodes": arr }))
}

fn status_line(name: &str, latency: u64, offset_ms: i64, st: &NodeStatus) -> String {
    let t = &st.telemetry;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let gpus = if t.gpus.is_empty() {
        no_gpu_text(&t.gpu_status)
    } else {
        t.gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU{} {:.1}/{:.1}G",
                    g.index,
                    gib(g.mem_used_bytes),
                    gib(g.mem_total_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ready = st.workers.iter().filter(|w| w.state.is_serving()).count();
    let clock = match clock::warning(offset_ms) {
        Some(w) => format!("  WARNING: {w}"),
        None => String::new(),
    };
    // The worker backends the node runs (`cpu`, `cuda`); absent from agents that predate them.
    let backends = match t.backends.join(",") {
        b if b.is_empty() => String::new(),
        b => format!("  backends {b}"),
    };
    format!(
        "{name}  connected  ping {latency} ms  clock {}  agent {}{backends}  cpu {:.0}%  ram {:.1}/{:.1}G  {gpus}  workers {} ({ready} ready){clock}\n",
        clock::offset_text(offset_ms),
        st.agent_version,
        t.cpu_percent,
        gib(t.mem_used_bytes),
        gib(t.mem_total_bytes),
        st.workers.len()
    )
}
