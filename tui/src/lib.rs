//! `rbee-tui`: the control center. Owns the dashboard (state → update → view over ratatui), the
//! sessions to every node's agent, bring-up of the local and SSH agents, and the headless
//! subcommands scripts and tests use. It must not speak the wire format by hand (that is
//! `rbee_client`'s) nor decide anything about workers (that is the agent's job): it asks and
//! shows.
//!
//! Layout (see `README.md` for one line per file):
//! * [`dashboard`]: what the operator sees and does — state, update, view, keys, the event loop.
//! * [`nodes`]: how a node is reached — config, local bring-up, SSH, the reconnecting session.
//! * [`cli`]: the command line — its definition and one file per subcommand family.
//! * [`fmt`], [`error`], [`logging`]: shared by all three.
//!
//! Dependencies point one way within each step: `cli` → `dashboard` → `nodes` → `error`/`fmt`,
//! except that node sessions speak the dashboard's `Action`/`Effect` vocabulary
//! (`dashboard::action`, plain data) and `:add` is read by the `nodes add` definition
//! (`cli::args`, plain data).
#![warn(missing_docs)]

pub mod cli;
pub mod dashboard;
pub mod error;
pub mod fmt;
pub mod gateway;
pub mod logging;
pub mod nodes;

pub use error::TuiError;
