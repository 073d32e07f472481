//! How a daemon (agent, worker) logs: `tracing` to stderr, filtered by `RBEE_LOG` (default
//! `info`), with terminal colours only when stderr is a terminal. The agent keeps each worker's
//! stderr as its log and the SSH bring-up sends the agent's to `agent.log`: escape codes there
//! would end up raw in files and on the dashboard.
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable that sets the log filter (`RBEE_LOG=debug`, `RBEE_LOG=rbee_agent=trace`).
pub const FILTER_VAR: &str = "RBEE_LOG";

/// Install the stderr logger; a second call does nothing.
pub fn init_stderr() {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

/// Install the logger writing to `path`, rotated by size (stderr follows the current file, so a
/// panic message lands beside the log); plain text. A second call does nothing.
pub fn init_file(path: &std::path::Path, rotation: crate::rotate::Rotation) -> std::io::Result<()> {
    let file = crate::rotate::RotatingFile::open(path, rotation)?.follow_with_stderr()?;
    let shared = std::sync::Arc::new(std::sync::Mutex::new(file));
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(move || EventWriter {
            file: shared.clone(),
            buf: Vec::new(),
        })
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
    Ok(())
}

/// One log event, gathered and written whole when the logger is done with it.
struct EventWriter {
    file: std::sync::Arc<std::sync::Mutex<crate::rotate::RotatingFile>>,
    buf: Vec<u8>,
}

impl std::io::Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = one_line(&self.buf);
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_line(&line);
        }
    }
}

/// One event as one line of the file: control bytes inside it (a newline or escape in a model
/// name, a worker id or anything else a client sent that a message quotes) become visible
/// `\xNN`, so no event can forge another line of the log; tabs stay, one newline ends it.
fn one_line(event: &[u8]) -> Vec<u8> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let mut out = Vec::with_capacity(body.len() + 1);
    for &b in body {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_is_one_line_whatever_it_quotes() {
        let got = super::one_line(b"spawn of `a\nFORGED\r\x1b[2J` failed\tok\n");
        assert_eq!(got, b"spawn of `a\\x0aFORGED\\x0d\\x1b[2J` failed\tok\n");
        assert_eq!(super::one_line(b"no newline \xff"), b"no newline \xff\n");
    }
}
