//! How a node is reached. `clock` (a node's clock offset, said), `config` (the node list and which nodes a command means), `local`
//! (finding or starting the agent on this machine), `ssh` (bring-up and tunnels over SSH),
//! `connect` (one session to any node, whatever reaches it), `add` (bring an SSH node up, then
//! record it) and `stop` (stopping a node's agent).
//!
//! Nothing here draws or decides what to show, and nothing here knows the dashboard: its
//! reconnecting session per node (`dashboard::node_session`) is built on `connect`.
pub mod add;
pub mod clock;
pub mod config;
pub mod connect;
pub mod describe;
pub mod error;
pub mod local;
pub mod ssh;
pub mod stop;
