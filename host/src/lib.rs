//! `rbee-host`: the few things every rbee binary asks of the machine it runs on, in one place
//! instead of a copy per binary: how much memory a process holds (`/proc`), and how a daemon
//! writes its log (plain text, no terminal colours, when its stderr is a file or a pipe; or into a
//! file rotated by size).
#![warn(missing_docs)]

pub mod build;
pub mod logging;
pub mod proc;
pub mod rotate;
