//! `nodes add | list | rm | stop`: the node list in the config file, and stopping an SSH node.
use std::path::Path;
use std::time::Duration;

use rbee_proto::config::{ConfigError, NodeConfig};
use serde_json::json;

use super::args::{AddArgs, NodesCmd};
use super::out::Out;
use crate::fmt::text_table;
use crate::nodes::add::add_ssh_node;
use crate::nodes::config::{ConfigFile, NodeTarget};
use crate::nodes::error::TuiError;
use crate::nodes::stop::stop_node;

/// Run one `nodes` subcommand against the loaded config.
pub(super) async fn run(
    cf: &mut ConfigFile,
    cmd: NodesCmd,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    match cmd {
        NodesCmd::Add(args) if args.ssh.is_some() => add_ssh(cf, &args, timeout, out).await,
        NodesCmd::Add(args) => add_url(cf, args, out),
        NodesCmd::List => list(cf, out),
        NodesCmd::Rm { name } => {
            cf.edit(|cf| cf.remove_node(&name))?;
            out.print(
                &format!("removed node {name} from {}\n", cf.path.display()),
                json!({ "removed": name }),
            )
        }
        NodesCmd::Stop { name } => stop(cf, name, out).await,
        NodesCmd::Logs {
            name,
            lines,
            follow,
        } => {
            let s = super::conn::open(&cf.select_one(Some(&name))?, timeout).await?;
            super::logs::print(&s, (None, lines, follow), timeout, out).await
        }
    }
}

/// `nodes add NAME --ssh …`: bring the node up, then record it.
async fn add_ssh(
    cf: &mut ConfigFile,
    args: &AddArgs,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let path = cf.path.clone();
    let name = args.name.clone();
    check_node_name(&path, &name)?;
    let req = args.ssh_request().expect("called for --ssh only");
    req.node
        .validate()
        .map_err(|message| ConfigError::Invalid {
            path: path.clone(),
            message: format!("node `{name}`: {message}"),
        })?;
    let ssh = req.node.ssh.clone().unwrap_or_default();
    let up = add_ssh_node(cf, &req, timeout).await?;
    let a = &up.agent;
    let mut what = match (a.installed, a.started) {
        (true, _) => "installed and started its agent",
        (false, true) => "started its agent",
        (false, false) => "reusing its running agent",
    }
    .to_string();
    if let Some(why) = &a.replaced {
        what.push_str(&format!(", the running one {why}"));
    }
    if let Some(s) = &a.supervisor {
        what.push_str(&format!(", kept up by {s}"));
    }
    let key = match &up.learned_host_key {
        Some(fp) => format!("; trusted new host key {fp}"),
        None => String::new(),
    };
    let gpu = match &up.gpu {
        Some(g) => format!("{name}: {g}\n"),
        None => String::new(),
    };
    out.print(
        &format!(
            "added node {name} (ssh://{ssh}): {what} (pid {}, {} in {}){key}\n{gpu}",
            a.pid, up.agent_version, a.dir
        ),
        json!({
            "added": name, "ssh": ssh, "config": path,
            "host_key_learned": up.learned_host_key,
            "gpu": up.gpu,
            "agent": {
                "pid": a.pid, "installed": a.installed, "started": a.started,
                "replaced": a.replaced, "supervisor": a.supervisor,
                "dir": a.dir, "addr": a.addr.to_string(),
                "version": up.agent_version, "node": up.agent_node,
            },
        }),
    )
}

/// `nodes add NAME --url ws://… --token-file FILE`.
fn add_url(cf: &mut ConfigFile, args: AddArgs, out: Out) -> Result<(), TuiError> {
    let (Some(url), Some(token_file)) = (args.url, args.token_file) else {
        unreachable!("clap requires --url with --token-file, or --ssh")
    };
    let (name, path) = (args.name, cf.path.clone());
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(ConfigError::Invalid {
            path,
            message: format!("key `nodes[].url`: `{url}` is not a ws://HOST:PORT or wss:// URL"),
        }
        .into());
    }
    check_node_name(&path, &name)?;
    // Stored absolute: the config is read from any working directory.
    let token_file = std::path::absolute(&token_file).unwrap_or(token_file);
    let node = NodeConfig {
        name: name.clone(),
        url: url.clone(),
        token_file: token_file.clone(),
        ..Default::default()
    };
    cf.edit(|cf| cf.add_node(node))?;
    out.print(
        &format!("added node {name} ({url}) to {}\n", path.display()),
        json!({ "added": name, "url": url, "token_file": token_file, "config": path }),
    )
}

fn list(cf: &ConfigFile, out: Out) -> Result<(), TuiError> {
    let rows: Vec<Vec<String>> = cf
        .config
        .nodes
        .iter()
        .map(|n| match &n.ssh {
            Some(addr) => vec![
                n.name.clone(),
                format!("ssh://{addr}"),
                format!(
                    "(over ssh{}; agent kept up by {})",
                    if n.ephemeral { ", ephemeral" } else { "" },
                    kept_up_by(addr, n.remote_dir.as_deref())
                ),
            ],
            None => vec![
                n.name.clone(),
                n.url.clone(),
                n.token_file.display().to_string(),
            ],
        })
        .collect();
    let text = if rows.is_empty() {
        format!(
            "no nodes in {}; the dashboard and subcommands use the local agent\n",
            cf.path.display()
        )
    } else {
        text_table(&["NAME", "URL", "TOKEN FILE"], &rows)
    };
    out.print(
        &text,
        serde_json::to_value(&cf.config.nodes).unwrap_or_default(),
    )
}

/// What the last bring-up of an SSH node found keeping its agent up, as noted on this machine.
fn kept_up_by(ssh: &str, remote_dir: Option<&str>) -> String {
    let addr = rbee_proto::config::SshAddr::parse(ssh)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| ssh.to_string());
    let note = crate::nodes::ssh::agent::supervisor_note(&addr, remote_dir);
    std::fs::read_to_string(note)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown (not brought up from here yet)".into())
}

async fn stop(cf: &ConfigFile, name: String, out: Out) -> Result<(), TuiError> {
    let node = match cf.select_one(Some(&name))? {
        NodeTarget::Remote(n) if n.ssh.is_some() => n,
        _ => return Err(TuiError::NotSsh { node: name }),
    };
    let s = stop_node(&node).await?;
    let text = match s.pid {
        Some(pid) => format!(
            "stopped node {name}: agent pid {pid} and {} worker process(es) are gone\n",
            s.workers.len()
        ),
        None => format!("node {name}: no agent was running\n"),
    };
    out.print(
        &text,
        json!({ "stopped": name, "agent_pid": s.pid, "worker_pids": s.workers }),
    )
}

fn check_node_name(path: &Path, name: &str) -> Result<(), TuiError> {
    if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
        return Err(ConfigError::Invalid {
            path: path.into(),
            message: format!("key `nodes[].name`: `{name}` must be one word"),
        }
        .into());
    }
    Ok(())
}
