//! `workers logs ID` and `nodes logs NAME`: a worker's log or the node agent's own, read over
//! the session (`ReadLog`), printed as plain text (colour codes removed, other control
//! characters made visible) or, with `--json`, as one object per answer with the raw lines.
//! `--follow` asks again every half second for what came after the last answer.
use std::time::Duration;

use rbee_client::ClientError;
use rbee_proto::session::{Reply, Request};
use rbee_proto::{ErrorCode, WorkerId};
use serde_json::json;

use super::conn::Session;
use super::out::Out;
use crate::TuiError;

/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Most new lines one `--follow` answer may bring (the agent's own cap).
const FOLLOW_LINES: usize = 10_000;

/// What to read and how: the worker (the agent itself when `None`), the last lines to print
/// first, and whether to keep printing what is written.
pub(super) type LogArgs = (Option<WorkerId>, usize, bool);

/// Print the log, then (with `--follow`) what is written to it, until the worker or the
/// session goes away or the user interrupts.
pub(super) async fn print(
    s: &Session,
    args: LogArgs,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let (worker, mut lines, follow) = args;
    let mut after = None;
    loop {
        let request = Request::ReadLog {
            worker: worker.clone(),
            lines,
            after,
        };
        let answer = match s.ask(request, timeout).await {
            // Followed until its worker was killed or removed: the log ends there, which is
            // what the follower waited for, not a failure.
            Err(TuiError::Request {
                source: ClientError::Agent(e),
                ..
            }) if e.code == ErrorCode::NotFound && after.is_some() => {
                if let Some(w) = &worker {
                    eprintln!(
                        "rbee-tui: worker {w} is gone from node {} (killed or removed); \
                         its log ends here",
                        s.name
                    );
                }
                return Ok(());
            }
            other => other?,
        };
        let (got, next, skipped) = match answer {
            Reply::LogLines {
                lines,
                next,
                skipped,
            } => (lines, next, skipped),
            other => return Err(s.unexpected("read log", other)),
        };
        show(&got, skipped, after.is_some(), out)?;
        if !follow {
            return Ok(());
        }
        after = Some(next);
        lines = FOLLOW_LINES;
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn show(lines: &[String], skipped: u64, following: bool, out: Out) -> Result<(), TuiError> {
    if out.json {
        if lines.is_empty() && skipped == 0 && following {
            return Ok(());
        }
        return out.print("", json!({ "lines": lines, "skipped": skipped }));
    }
    let mut text = String::new();
    if skipped > 0 {
        text.push_str(&format!("… {skipped} line(s) not shown\n"));
    }
    for l in lines {
        text.push_str(&rbee_proto::fmt::log_line(l));
        text.push('\n');
    }
    // Already terminal-safe: `log_line` left no control character.
    out.print(&text, serde_json::Value::Null)
}
