//! `rbee-tui`: the control center. Owns the dashboard (state → update → view over ratatui), the
//! sessions to every node's agent, bring-up of the local and SSH agents, and the headless
//! subcommands scripts and tests use. It must not speak the wire format by hand (that is
//! `rbee_client`'s) nor decide anything about workers (that is the agent's job): it asks and
//! shows.
//!
//! Layout (see `README.md` for one line per file):
//! * [`dashboard`]: what the operator sees and does — state, update, view, keys, the event loop,
//!   the reconnecting session per node.
//! * [`nodes`]: how a node is reached — config, local bring-up, SSH, one connection, and
//!   [`TuiError`], every failure the operator can act on.
//! * [`gateway`]: the OpenAI-compatible HTTP API over the same sessions.
//! * [`cli`]: the command line — its definition and one file per subcommand family.
//! * [`fmt`], [`logging`]: shared by all.
//!
//! Dependencies point one way: `cli` → `gateway` → `dashboard` → `nodes` → `fmt`; no folder
//! imports one that imports it back (`tests/tests/layout.rs` checks files and folders).
#![warn(missing_docs)]

pub mod cli;
pub mod dashboard;
pub mod fmt;
pub mod gateway;
pub mod logging;
pub mod nodes;

pub use nodes::error::TuiError;
