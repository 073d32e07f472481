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
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_line(&self.buf);
        }
    }
}
