//! The names of the files in an agent's state directory. The agent writes them; the dashboard,
//! the SSH bring-up and the tests read them to find a running agent. One list, so a rename cannot
//! leave a reader looking for the old name.

/// Held (advisory `flock`) by the running agent; a second agent on the same directory refuses to
/// start. Holds the agent's pid as text.
pub const LOCK: &str = "agent.lock";
/// `host:port` the agent listens on, written once it accepts connections.
pub const ADDR: &str = "agent.addr";
/// The bearer token sessions must present (mode 0600).
pub const TOKEN: &str = "token";
/// What the operator asked for (the workers to restore after a restart), written atomically.
pub const DESIRED: &str = "desired.json";
/// The append-only audit log, one JSON object per line.
pub const AUDIT: &str = "audit.jsonl";
/// The agent's own log when it runs detached.
pub const AGENT_LOG: &str = "agent.log";
/// Directory of per-worker log files.
pub const WORKER_LOGS: &str = "logs";
