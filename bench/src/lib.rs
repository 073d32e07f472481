//! `rbee-bench`: benchmark programs that are not timed tests.
//!
//! * [`loadgen`]: simulated nodes on the testkit's stand-in agent, speaking the real session
//!   protocol on loopback and pushing a configurable stream of worker heartbeats, telemetry and
//!   state changes (binary `loadgen`).
//! * [`fanin`]: the dashboard's own event loop (`rbee_tui::dashboard::runtime`) driven headless
//!   against those agents, measured (binary `fanin`, script `bench/fanin.sh`).
//! * [`measure`]: CPU time, percentiles, machine description.
#![warn(missing_docs)]

pub mod fanin;
pub mod loadgen;
pub mod measure;
