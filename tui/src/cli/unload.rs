//! `workers unload-all`: every worker of the selected nodes killed (`Request::Kill`, which also
//! drops it from the node's desired state), after a yes on a terminal unless `--yes`.
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use rbee_proto::session::{Reply, Request};
use serde_json::{json, Value};

use super::conn::{each_node, Session};
use super::out::{first_error, Out};
use crate::nodes::config::NodeTarget;
use crate::nodes::error::TuiError;

/// List every node's workers, confirm, kill them all; print what was killed per node.
pub(super) async fn run(
    targets: &[NodeTarget],
    yes: bool,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let listed = each_node(targets, timeout, |s| async move {
        let ids: Vec<String> = s
            .workers(timeout)
            .await?
            .into_iter()
            .map(|w| w.id)
            .collect();
        Ok((s, ids))
    })
    .await;
    let (ok, mut err) = first_error(listed);
    let total: usize = ok.iter().map(|(_, (_, ids))| ids.len()).sum();
    if total > 0 && !yes && std::io::stdin().is_terminal() {
        let nodes: Vec<&str> = ok.iter().map(|(n, _)| n.as_str()).collect();
        confirm(&format!(
            "unload {total} worker(s) on {}?",
            nodes.join(", ")
        ))?;
    }
    let kills = ok.into_iter().map(|(node, (s, ids))| async move {
        let r = kill_all(&s, &ids, timeout).await;
        (node, r)
    });
    let done = futures_util::future::join_all(kills).await;
    let mut text = String::new();
    let mut arr = Vec::new();
    for (node, r) in done {
        match r {
            Ok(killed) => {
                for id in &killed {
                    text.push_str(&format!("killed {id} on {node}\n"));
                }
                arr.push(json!({ "node": node, "killed": killed }));
            }
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    if total == 0 && err.is_none() {
        text.push_str("no workers\n");
    }
    out.print(&text, Value::Array(arr))?;
    err.map_or(Ok(()), Err)
}

/// Kill `ids` one after another; the ids the agent confirmed, or the first failure.
async fn kill_all(s: &Session, ids: &[String], timeout: Duration) -> Result<Vec<String>, TuiError> {
    let mut killed = Vec::new();
    for id in ids {
        match s.ask(Request::Kill { worker: id.clone() }, timeout).await? {
            Reply::Killed { worker } => killed.push(worker),
            other => return Err(s.unexpected("kill", other)),
        }
    }
    Ok(killed)
}

/// Ask `question [y/N]` on stderr; anything but `y`/`yes` declines.
fn confirm(question: &str) -> Result<(), TuiError> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question} [y/N] ");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(TuiError::Terminal)?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(TuiError::Declined(question.trim_end_matches('?').into())),
    }
}
