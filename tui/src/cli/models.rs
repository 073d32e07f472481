//! `models list | pull`: what the nodes can serve, and fetching a model into a node's cache.
use std::time::Duration;

use rbee_client::{ClientError, Incoming};
use rbee_proto::fmt::{bytes as fmt_bytes, printable};
use rbee_proto::session::{Event, Reply, Request};
use serde_json::{json, Value};

use super::conn::{each_node, open};
use super::out::{first_error, Out};
use crate::fmt::text_table;
use crate::nodes::config::NodeTarget;
use crate::nodes::describe::describe;
use crate::nodes::error::TuiError;

/// `models pull`: the request, with the node's progress events shown while it runs.
pub(super) async fn pull(
    target: &NodeTarget,
    model: String,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let mut s = open(target, timeout).await?;
    s.ask(Request::Subscribe, timeout).await?;
    let request = Request::Pull {
        model: model.clone(),
    };
    let what = describe(&request);
    let fut = s.client.request(request, Some(timeout));
    tokio::pin!(fut);
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
    let reply = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(m) = s.incoming.recv() => {
                if let Incoming::Event(Event::PullProgress { model: m, file, downloaded_bytes, total_bytes }) = m {
                    if m == model && !file.is_empty() {
                        let pct = (downloaded_bytes * 100).checked_div(total_bytes).unwrap_or(100);
                        let (m, file) = (printable(&m), printable(&file));
                        eprintln!("{m}: {pct:>3}% {} of {} ({file})", fmt_bytes(downloaded_bytes), fmt_bytes(total_bytes));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(TuiError::Request { node: s.name.clone(), what, source: ClientError::Timeout(timeout) });
            }
        }
    };
    match reply {
        Ok(Reply::Pulled { model, path, downloaded_bytes }) => out.print(
            &format!("{path}\n"),
            json!({ "node": s.name, "model": model, "path": path, "downloaded_bytes": downloaded_bytes }),
        ),
        Ok(other) => Err(s.unexpected("pull", other)),
        Err(source) => Err(TuiError::Request { node: s.name.clone(), what, source }),
    }
}

/// `models list`: every selected node's catalog in one table.
pub(super) async fn list(
    targets: &[NodeTarget],
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let results = each_node(targets, timeout, |s| async move {
        match s.ask(Request::ListModels, timeout).await? {
            Reply::Models { models } => Ok(models),
            other => Err(s.unexpected("list models", other)),
        }
    })
    .await;
    let (ok, err) = first_error(results);
    let mut rows = Vec::new();
    let mut arr = Vec::new();
    for (node, models) in &ok {
        for m in models {
            rows.push(vec![
                node.clone(),
                m.name.clone(),
                m.format.clone(),
                fmt_bytes(m.size_bytes),
                m.reference.clone(),
            ]);
            arr.push(json!({ "name": m.name, "ref": m.reference, "node": node, "size_bytes": m.size_bytes, "format": m.format }));
        }
    }
    if err.is_none() || !rows.is_empty() {
        out.print(
            &text_table(&["NODE", "NAME", "FORMAT", "SIZE", "REF"], &rows),
            Value::Array(arr),
        )?;
    }
    err.map_or(Ok(()), Err)
}
