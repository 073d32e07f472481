//! Where answers go: stdout, as text or (with `--json`) one JSON value; failures of some nodes
//! of a multi-node listing on stderr.
use std::io::Write;

use rbee_proto::session::WorkerInfo;
use serde_json::Value;

use crate::nodes::error::TuiError;

/// Where answers go: stdout, as text or JSON.
#[derive(Debug, Clone, Copy)]
pub(super) struct Out {
    /// `--json`.
    pub(super) json: bool,
}

impl Out {
    /// `text` (its lines with control characters escaped: it carries agent- and user-supplied
    /// names), or `value` on one line with `--json`.
    pub(super) fn print(&self, text: &str, value: Value) -> Result<(), TuiError> {
        let mut stdout = std::io::stdout().lock();
        let r = if self.json {
            writeln!(stdout, "{value}")
        } else {
            write!(stdout, "{}", terminal_safe(text))
        };
        r.and_then(|_| stdout.flush()).map_err(TuiError::Output)
    }
}

/// `text` with every control character but the line ends escaped (`rbee_proto::fmt::printable`).
pub(super) fn terminal_safe(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(l) => format!("{}\n", rbee_proto::fmt::printable(l)),
            None => rbee_proto::fmt::printable(line).into_owned(),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn output_keeps_lines_and_escapes_the_rest() {
        assert_eq!(terminal_safe("a\nb\n"), "a\nb\n");
        assert_eq!(
            terminal_safe("w1 \x1b]0;pwned\x07\n\x1b[2J"),
            "w1 \\x1b]0;pwned\\x07\n\\x1b[2J"
        );
    }
}
