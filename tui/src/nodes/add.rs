//! Adding an SSH node: bring it up first (host key, agent, a working session), record it in the
//! config file only when that worked. `nodes add --ssh` and the dashboard's `:add` both come here.
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use rbee_proto::config::NodeConfig;

use crate::nodes::config::{check_remote_paths, AddNodeRequest, ConfigFile};
use crate::nodes::connect::{bring_up, BroughtUp};
use crate::nodes::error::TuiError;
use crate::nodes::ssh::SshError;

/// Bring the requested node up and, when that worked, record it in `config` and save it.
pub async fn add_ssh_node(
    config: &mut ConfigFile,
    req: &AddNodeRequest,
    timeout: Duration,
) -> Result<BroughtUp, TuiError> {
    // Refuse a duplicate or an unusable remote path before touching the node.
    check_remote_paths(&req.node, &config.path)?;
    config.clone().add_node(req.node.clone())?;
    let up = bring_up(&req.node, req.accept_new_host_key, timeout).await?;
    // Under the file's lock and read again: it may have changed while the node came up.
    config.edit(|c| c.add_node(req.node.clone()))?;
    tracing::info!(node = %req.node.name, config = %config.path.display(), "added SSH node");
    Ok(up)
}

/// When `e` is a host key nobody has trusted yet: the host and the key as "ALGO SHA256:…", for
/// the operator to decide on.
pub fn unknown_host_key(e: &TuiError) -> Option<(String, String)> {
    match e {
        TuiError::Ssh { source, .. } => match source.as_ref() {
            SshError::HostKeyUnknown {
                host,
                algo,
                fingerprint,
            } => Some((host.clone(), format!("{algo} {fingerprint}"))),
            _ => None,
        },
        _ => None,
    }
}

/// `nodes add`, and the dashboard's `:add` (see [`parse_dashboard_add`]).
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("how").required(true).args(["url", "ssh"])))]
pub struct AddArgs {
    /// The node's name, one word.
    pub name: String,
    /// The agent's address.
    #[arg(long, value_name = "ws://HOST:PORT", requires = "token_file")]
    pub url: Option<String>,
    /// The file holding the agent's token.
    #[arg(long, value_name = "FILE", requires = "url")]
    pub token_file: Option<PathBuf>,
    /// Reach the node over SSH; its agent is installed and started as needed.
    #[arg(long, value_name = "USER@HOST[:PORT]", conflicts_with_all = ["url", "token_file"])]
    pub ssh: Option<String>,
    /// Private key for SSH [default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa].
    #[arg(long, value_name = "FILE", requires = "ssh")]
    pub identity: Option<PathBuf>,
    /// Trust the node's host key if it is not known yet (it is recorded in rbee's known_hosts).
    #[arg(long, requires = "ssh")]
    pub accept_new_host_key: bool,
    /// Stop the node's agent when the dashboard quits.
    #[arg(long, requires = "ssh")]
    pub ephemeral: bool,
    /// Directory on the node for rbee's binaries and the agent's state [default: ~/.local/share/rbee].
    #[arg(long, value_name = "DIR", requires = "ssh")]
    pub remote_dir: Option<String>,
    /// A model directory on the node for its agent (repeatable). An agent already running there
    /// without it is restarted with it (its workers come back from its desired state).
    #[arg(long = "model-dir", value_name = "DIR", requires = "ssh")]
    pub model_dirs: Vec<String>,
    /// Keep the node's rbee-agent and rbee-worker when they are another build than this
    /// machine's (same protocol); by default they are replaced.
    #[arg(long, requires = "ssh")]
    pub no_upgrade: bool,
}

impl AddArgs {
    /// The SSH node these arguments describe (`None` for a `--url` node), its identity file made
    /// absolute: the config is read from any working directory.
    pub fn ssh_request(&self) -> Option<AddNodeRequest> {
        let ssh = self.ssh.clone()?;
        let node = NodeConfig {
            name: self.name.clone(),
            ssh: Some(ssh),
            identity: self
                .identity
                .clone()
                .map(|i| std::path::absolute(&i).unwrap_or(i)),
            ephemeral: self.ephemeral,
            remote_dir: self.remote_dir.clone(),
            model_dirs: self.model_dirs.clone(),
            no_upgrade: self.no_upgrade,
            ..Default::default()
        };
        Some(AddNodeRequest {
            node,
            accept_new_host_key: self.accept_new_host_key,
        })
    }
}

/// What the dashboard says when `:add` is not understood.
const ADD_USAGE: &str = "usage: :add NAME USER@HOST[:PORT] [--identity FILE] [--accept-new-host-key] [--ephemeral] [--remote-dir DIR] [--model-dir DIR] [--no-upgrade]";

/// The dashboard's `:add NAME USER@HOST[:PORT] [flags]`: read by the same definition as
/// `nodes add NAME --ssh USER@HOST[:PORT] [flags]`, and checked the same way. Errors are one line.
pub fn parse_dashboard_add(words: &[&str]) -> Result<AddNodeRequest, String> {
    #[derive(Debug, Parser)]
    #[command(name = ":add")]
    struct DashboardAdd {
        #[command(flatten)]
        args: AddArgs,
    }
    let (Some(name), Some(ssh)) = (words.first(), words.get(1)) else {
        return Err(ADD_USAGE.into());
    };
    if name.starts_with('-') || ssh.starts_with('-') {
        return Err(ADD_USAGE.into());
    }
    let argv = [":add", name, "--ssh", ssh]
        .into_iter()
        .chain(words[2..].iter().copied());
    let parsed = DashboardAdd::try_parse_from(argv).map_err(one_line)?;
    let req = parsed.args.ssh_request().ok_or(ADD_USAGE)?;
    req.node.validate()?;
    Ok(req)
}

/// A clap error as one line for the status bar: what is wrong, then the usage.
fn one_line(e: clap::Error) -> String {
    let text = e.render().to_string();
    let what: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Usage:")
                && !l.starts_with("tip:")
                && !l.starts_with("For more information")
        })
        .collect();
    let what = what.join(" ");
    format!("{}; {ADD_USAGE}", what.trim_start_matches("error: "))
}
