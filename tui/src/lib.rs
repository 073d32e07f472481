//! `rbee-tui`: the control center. Owns the dashboard (state → update → view over ratatui), the
//! sessions to every node's agent, bring-up of the local agent, and the headless subcommands
//! scripts and tests use. It must not speak the wire format by hand (that is `rbee_proto`'s
//! client) nor decide anything about workers (that is the agent's job): it asks and shows.
//!
//! Entry points: [`cli::run`] for everything the binary does, [`local::ensure_local_agent`] to
//! find or start the agent on this machine, and [`state`]/[`update`]/[`view`] for tests that drive
//! the dashboard without a terminal.
pub mod action;
pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod keys;
pub mod local;
pub mod logging;
pub mod session;
pub mod ssh;
pub mod state;
pub mod update;
pub mod view;

pub use error::TuiError;
