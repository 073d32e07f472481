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
