//! Where answers go: stdout, as text or (with `--json`) one JSON value; failures of some nodes
//! of a multi-node listing on stderr.
use std::io::Write;

use rbee_proto::session::WorkerInfo;
use serde_json::Value;

use crate::error::TuiError;

/// Where answers go: stdout, as text or JSON.
#[derive(Debug, Clone, Copy)]
pub(super) struct Out {
    /// `--json`.
    pub(super) json: bool,
}

impl Out {
    /// `text` as is, or `value` on one line with `--json`.
    pub(super) fn print(&self, text: &str, value: Value) -> Result<(), TuiError> {
        let mut stdout = std::io::stdout().lock();
        let r = if self.json {
            writeln!(stdout, "{value}")
        } else {
            write!(stdout, "{text}")
        };
        r.and_then(|_| stdout.flush()).map_err(TuiError::Output)
    }
}

/// A worker as JSON, with its node's name added.
pub(super) fn worker_json(node: &str, w: &WorkerInfo) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert("node".into(), Value::String(node.into()));
    }
    v
}

/// Print what succeeded; fail with the first error (after all output) when any node failed.
pub(super) fn first_error<T>(
    results: Vec<(String, Result<T, TuiError>)>,
) -> (Vec<(String, T)>, Option<TuiError>) {
    let mut ok = Vec::new();
    let mut err = None;
    for (name, r) in results {
        match r {
            Ok(v) => ok.push((name, v)),
            Err(e) => {
                if err.is_some() {
                    eprintln!("rbee-tui: {e}");
                } else {
                    err = Some(e);
                }
            }
        }
    }
    (ok, err)
}
