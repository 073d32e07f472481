//! `workers list | spawn | kill | restart` (`unload-all` is `unload`).
use std::io::IsTerminal;
use std::time::Duration;

use rbee_client::Incoming;
use rbee_proto::fmt::rate as fmt_rate;
use rbee_proto::session::{Event, Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::WorkerState;
use serde_json::{json, Value};

use super::args::WorkersCmd;
use super::conn::{each_node, open, Session};
use super::out::{first_error, worker_json, Out};
use crate::fmt::{short_model, text_table};
use crate::nodes::config::{ConfigFile, NodeTarget};
use crate::nodes::error::TuiError;

/// Run one `workers` subcommand.
pub(super) async fn run(
    cf: &ConfigFile,
    cmd: WorkersCmd,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    match cmd {
        WorkersCmd::List { node } => {
            let targets = cf.select(node.as_deref())?;
            let results = each_node(
                &targets,
                timeout,
                |s| async move { s.workers(timeout).await },
            )
            .await;
            let (ok, err) = first_error(results);
            let mut rows = Vec::new();
            let mut arr = Vec::new();
            for (node, ws) in &ok {
                for w in ws {
                    rows.push(vec![
                        node.clone(),
                        w.id.clone(),
                        w.state.to_string(),
                        w.device.clone(),
                        w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        w.restarts.to_string(),
                        fmt_rate(w.tokens_per_s),
                        short_model(&w.model).to_string(),
                    ]);
                    arr.push(worker_json(node, w));
                }
            }
            if err.is_none() || !rows.is_empty() {
                let header = [
                    "NODE", "ID", "STATE", "DEVICE", "PID", "RESTARTS", "TOK/S", "MODEL",
                ];
                out.print(&text_table(&header, &rows), Value::Array(arr))?;
            }
            err.map_or(Ok(()), Err)
        }
        WorkersCmd::Spawn {
            node,
            model,
            device,
            threads,
            parallel,
            ctx,
            wait,
        } => {
            let target = cf.select_one(node.as_deref())?;
            spawn(
                &target,
                SpawnSpec {
                    model,
                    device,
                    threads,
                    parallel,
                    ctx,
                },
                wait,
                timeout,
                out,
            )
            .await
        }
        WorkersCmd::Kill { id, node } => {
            let (s, id) = find_worker(cf, &id, node.as_deref(), timeout).await?;
            match s.ask(Request::Kill { worker: id.clone() }, timeout).await? {
                Reply::Killed { worker } => out.print(
                    &format!("killed {worker} on {}\n", s.name),
                    json!({ "killed": worker, "node": s.name }),
                ),
                other => Err(s.unexpected("kill", other)),
            }
        }
        WorkersCmd::Logs {
            id,
            node,
            lines,
            follow,
        } => {
            let (s, worker) = find_worker(cf, &id, node.as_deref(), timeout).await?;
            super::logs::print(&s, (Some(worker), lines, follow), timeout, out).await
        }
        WorkersCmd::UnloadAll { node, yes } => {
            super::unload::run(&cf.select(node.as_deref())?, yes, timeout, out).await
        }
        WorkersCmd::Restart { id, node } => {
            let (s, id) = find_worker(cf, &id, node.as_deref(), timeout).await?;
            match s
                .ask(Request::Restart { worker: id.clone() }, timeout)
                .await?
            {
                Reply::Restarted { worker } => out.print(
                    &format!("restarting {worker} on {}\n", s.name),
                    json!({ "restarted": worker, "node": s.name }),
                ),
                other => Err(s.unexpected("restart", other)),
            }
        }
    }
}

/// The session of the node that has worker `id`: the named node, the only node, or the one node
/// whose worker list has it.
async fn find_worker(
    cf: &ConfigFile,
    id: &str,
    node: Option<&str>,
    timeout: Duration,
) -> Result<(Session, String), TuiError> {
    let targets = cf.select(node)?;
    if targets.len() == 1 {
        return Ok((open(&targets[0], timeout).await?, id.to_string()));
    }
    let id_owned = id.to_string();
    let results = each_node(&targets, timeout, |s| {
        let id = id_owned.clone();
        async move {
            let has = s.workers(timeout).await?.iter().any(|w| w.id == id);
            Ok(has.then_some(s))
        }
    })
    .await;
    let mut found = Vec::new();
    for (name, r) in results {
        match r {
            Ok(Some(s)) => found.push(s),
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %name, "skipped: {e}"),
        }
    }
    match found.len() {
        0 => Err(TuiError::WorkerNotFound {
            id: id.into(),
            scope: "any reachable node".into(),
        }),
        1 => Ok((found.remove(0), id.into())),
        _ => Err(TuiError::AmbiguousWorker {
            id: id.into(),
            nodes: found
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

async fn spawn(
    target: &NodeTarget,
    spec: SpawnSpec,
    wait: bool,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let mut s = open(target, timeout).await?;
    if wait {
        // Subscribe first: the worker's state changes after the spawn reply must not be missed.
        s.ask(Request::Subscribe, timeout).await?;
    }
    let worker = match s.ask(Request::Spawn(spec), timeout).await? {
        Reply::Spawned { worker } => worker,
        other => return Err(s.unexpected("spawn", other)),
    };
    if !wait {
        return out.print(&format!("{}\n", worker.id), worker_json(&s.name, &worker));
    }
    if !out.json {
        // The id first, so a script can read it while the model loads.
        out.print(&format!("{}\n", worker.id), Value::Null)?;
    }
    let verbose = std::io::stderr().is_terminal();
    let id = worker.id.clone();
    let mut last = worker;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if last.state.is_serving() {
            break;
        }
        if matches!(last.state, WorkerState::Failed | WorkerState::Exited) {
            if out.json {
                out.print("", worker_json(&s.name, &last))?;
            }
            return Err(TuiError::WorkerFailed {
                id,
                node: s.name.clone(),
                state: last.state.to_string(),
                reason: failure_reason(&last),
            });
        }
        let msg = match tokio::time::timeout_at(deadline, s.incoming.recv()).await {
            Err(_) => {
                return Err(TuiError::Timeout {
                    what: format!(
                        "waiting for {id} on {} to be ready (it is {})",
                        s.name, last.state
                    ),
                    secs: timeout.as_secs(),
                })
            }
            Ok(m) => m,
        };
        match msg {
            Some(Incoming::Event(Event::WorkerState { worker })) if worker.id == id => {
                if verbose && (worker.state != last.state || worker.detail != last.detail) {
                    eprintln!(
                        "{id}: {}{}",
                        worker.state,
                        if worker.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", rbee_proto::fmt::printable(&worker.detail))
                        }
                    );
                }
                last = worker;
            }
            Some(Incoming::Event(Event::WorkerReady { worker, model, .. })) if worker == id => {
                last.state = WorkerState::Ready;
                last.summary = Some(model);
            }
            Some(Incoming::Closed(reason)) => {
                return Err(TuiError::SessionClosed {
                    node: s.name.clone(),
                    reason,
                })
            }
            None => {
                return Err(TuiError::SessionClosed {
                    node: s.name.clone(),
                    reason: "connection closed".into(),
                })
            }
            Some(_) => {}
        }
    }
    if out.json {
        out.print("", worker_json(&s.name, &last))?;
    } else if verbose {
        eprintln!("{id}: ready");
    }
    Ok(())
}

fn failure_reason(w: &WorkerInfo) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &w.last_exit {
        parts.push(e.clone());
    }
    // The agent often says the same in both (a load that timed out): once is enough.
    if !w.detail.is_empty() && w.last_exit.as_deref() != Some(w.detail.as_str()) {
        parts.push(w.detail.clone());
    }
    if parts.is_empty() {
        "no reason given".into()
    } else {
        parts.join("; ")
    }
}
