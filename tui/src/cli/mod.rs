//! The command line: the dashboard (no subcommand) and the headless subcommands scripts and tests
//! use. The definition is `args`; each subcommand family has its file (`nodes`, `models`,
//! `workers`, `infer`, `chat`, `status`, `logs`), over `conn` (one connected node, or all of them) and `out`
//! (stdout as text or JSON). [`run`] loads the config file once and hands each command what it
//! needs. Every subcommand goes through the same `nodes::connect` as the dashboard. Success is
//! exit 0 with the answer on stdout (`--json` for machines); failure is a `TuiError` the binary
//! prints as one line, `rbee-tui: <reason>`.
use std::time::Duration;

use crate::nodes::config::{config_path, ConfigFile};
use crate::nodes::error::TuiError;

pub mod args;
mod chat;
mod conn;
mod infer;
mod logs;
mod models;
mod nodes;
mod out;
pub mod serve;
mod status;
mod unload;
mod workers;

use args::{Cli, Command, ModelsCmd};
use out::Out;

/// Run what the command line asks. The dashboard when there is no subcommand.
pub async fn run(cli: Cli) -> Result<(), TuiError> {
    let path = config_path(cli.config.as_deref())?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let out = Out { json: cli.json };
    let Some(command) = cli.command else {
        let log = cli
            .log_file
            .clone()
            .unwrap_or_else(crate::logging::default_log_path);
        crate::logging::init_file(&log)?;
        let cf = ConfigFile::load(&path)?;
        tracing::info!(config = %path.display(), nodes = cf.config.nodes.len(), "dashboard starting");
        let Some(listen) = cli.serve else {
            return crate::dashboard::app::run(cf.targets(), path, None).await;
        };
        // Bound before the terminal is taken, so its errors print as usual.
        let gw = serve::beside_dashboard(cf.targets(), listen, cli.api_key_file).await?;
        let shown = (gw.addr.to_string(), gw.board.clone());
        let result = crate::dashboard::app::run(cf.targets(), path, Some(shown)).await;
        let stopped = gw.stop().await;
        return result.and(stopped);
    };
    crate::logging::init_stderr_if_asked();
    let mut cf = ConfigFile::load(&path)?;
    match command {
        Command::Nodes(cmd) => nodes::run(&mut cf, cmd, timeout, out).await,
        Command::Models(ModelsCmd::List { node }) => {
            models::list(&cf.select(node.as_deref())?, timeout, out).await
        }
        Command::Models(ModelsCmd::Pull { node, model }) => {
            models::pull(&cf.select_one(node.as_deref())?, model, timeout, out).await
        }
        Command::Workers(cmd) => workers::run(&cf, cmd, timeout, out).await,
        Command::Infer(args) => {
            let target = cf.select_one(args.node.as_deref())?;
            infer::run(&target, args, timeout, out).await
        }
        Command::Chat(args) => {
            let target = cf.select_one(args.node.as_deref())?;
            chat::run(&target, args, timeout, out).await
        }
        Command::Status => status::run(&cf.targets(), timeout, out).await,
        Command::Serve(args) => serve::run(cf.targets(), *args).await,
    }
}
