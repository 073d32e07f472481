//! The dashboard: `state` (plain data) → `update` (the only place it changes, from `action`s,
//! returning `Effect`s) → `view` (a pure function of the state). `keys` is the one key table;
//! `node_session` keeps one reconnecting session per node, turning its events into `Action`s and
//! carrying out `Effect`s; `runtime` is the one event loop that wires sessions, input, clock and
//! frames together; `app` puts it in a terminal. `board` is the gateway's live list of requests,
//! which the Requests screen draws.
pub mod action;
pub mod app;
pub mod board;
pub mod keys;
pub mod node_session;
pub mod runtime;
pub mod state;
pub mod update;
pub mod view;
