//! Adding an SSH node: bring it up first (host key, agent, a working session), record it in the
//! config file only when that worked. `nodes add --ssh` and the dashboard's `:add` both come here.
use std::time::Duration;

use crate::error::TuiError;
use crate::nodes::config::{check_remote_paths, AddNodeRequest, ConfigFile};
use crate::nodes::connect::{bring_up, BroughtUp};
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
