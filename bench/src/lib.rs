//! `rbee-bench`: benchmark programs that are not timed tests.
//!
//! * [`loadgen`]: fake agents speaking the real session protocol on loopback, pushing a
//!   configurable stream of worker heartbeats, telemetry and state changes (binary `loadgen`).
//! * [`fanin`]: the dashboard's real session, update and view code driven headless against
//!   those agents, measured (binary `fanin`, script `bench/fanin.sh`).
//! * [`measure`]: CPU time, peak RSS, percentiles, machine description.
pub mod fanin;
pub mod loadgen;
pub mod measure;
