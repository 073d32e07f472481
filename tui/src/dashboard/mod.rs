//! The dashboard: `state` (plain data) → `update` (the only place it changes, from `action`s,
//! returning `Effect`s) → `view` (a pure function of the state). `keys` is the one key table;
//! `runtime` is the one event loop that wires sessions, input, clock and frames together; `app`
//! puts it in a terminal.
pub mod action;
pub mod app;
pub mod keys;
pub mod runtime;
pub mod state;
pub mod update;
pub mod view;
