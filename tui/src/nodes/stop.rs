//! Stopping a node's agent: `nodes stop`, and the ephemeral nodes when the dashboard quits.
use rbee_proto::config::NodeConfig;

use crate::nodes::connect::ssh_error;
use crate::nodes::error::TuiError;
use crate::nodes::ssh::agent::{stop_agent, Stopped};
use crate::nodes::ssh::conn::SshConn;
use crate::nodes::ssh::{SshOptions, SSH_COMMAND_TIMEOUT};

/// Stop the SSH node's agent and its workers and check they are gone.
pub async fn stop_node(node: &NodeConfig) -> Result<Stopped, TuiError> {
    let err = ssh_error(&node.name);
    let opts = SshOptions::from_node(node).map_err(&err)?;
    let conn = SshConn::open(&opts).await.map_err(&err)?;
    let stopped = stop_agent(&conn, &opts).await;
    conn.close().await;
    stopped.map_err(err)
}

/// Stop the agents of ephemeral nodes (the dashboard is quitting). Reports to the log and, if
/// the terminal is still there, on stderr.
pub async fn stop_ephemeral(nodes: &[NodeConfig]) {
    use std::io::Write;
    let say = |line: String| {
        let _ = writeln!(std::io::stderr(), "rbee-tui: {line}");
    };
    let futs = nodes.iter().map(|n| async move {
        let r = tokio::time::timeout(SSH_COMMAND_TIMEOUT, stop_node(n)).await;
        match r {
            Ok(Ok(s)) => {
                tracing::info!(node = %n.name, ?s, "stopped ephemeral node");
                if let Some(pid) = s.pid {
                    say(format!(
                        "stopped ephemeral node {} (agent pid {pid}, {} workers)",
                        n.name,
                        s.workers.len()
                    ));
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %n.name, "stopping ephemeral node failed: {e}");
                say(format!("ephemeral node {}: {e}", n.name));
            }
            Err(_) => {
                tracing::warn!(node = %n.name, "stopping ephemeral node timed out");
                say(format!("ephemeral node {}: stop timed out", n.name));
            }
        }
    });
    futures_util::future::join_all(futs).await;
}
