//! Reaching a node's agent once: resolve the target (the configured URL and token file, the local
//! agent started on demand, or an SSH node brought up and tunnelled to), connect and complete the
//! handshake. The subcommands use this directly; the dashboard's sessions call it on every
//! (re)connect.
use std::time::Duration;

use rbee_client::{Client, Incoming};
use rbee_proto::config::NodeConfig;
use tokio::sync::mpsc;

use crate::nodes::config::NodeTarget;
use crate::nodes::error::TuiError;
use crate::nodes::local::{ensure_local_agent, LocalError};
use crate::nodes::ssh::agent::{ensure_agent, RemoteAgent};
use crate::nodes::ssh::conn::SshConn;
use crate::nodes::ssh::{SshError, SshOptions};

/// How we introduce ourselves in the handshake.
pub const CLIENT_NAME: &str = concat!("rbee-tui/", env!("CARGO_PKG_VERSION"));
/// Longest wait for a connection plus handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A session that completed its handshake.
pub struct Connection {
    /// Requests go here.
    pub client: Client,
    /// Events and errors the agent pushes; closes with the session.
    pub incoming: mpsc::Receiver<Incoming>,
    /// Where it went, for people (`ws://…`, or `ssh://USER@HOST:PORT → 127.0.0.1:P`).
    pub url: String,
}

/// Where to connect and with which token.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `ws://HOST:PORT` or `wss://…`.
    pub url: String,
    /// The bearer token, trimmed.
    pub token: String,
}

/// Resolve a target to a URL and token; for the local node this finds or starts the agent.
pub async fn endpoint(target: &NodeTarget) -> Result<Endpoint, TuiError> {
    let (url, token_file) = match target {
        NodeTarget::Remote(n) => (n.url.clone(), n.token_file.clone()),
        NodeTarget::Local => {
            let agent = tokio::task::spawn_blocking(ensure_local_agent)
                .await
                .map_err(|e| {
                    TuiError::Local(LocalError::Io {
                        path: "spawn_blocking".into(),
                        source: std::io::Error::other(e),
                    })
                })??;
            (agent.url(), agent.token_file)
        }
    };
    let token = tokio::fs::read_to_string(&token_file)
        .await
        .map_err(|source| TuiError::TokenFile {
            node: target.name().into(),
            path: token_file.clone(),
            source,
        })?;
    Ok(Endpoint {
        url,
        token: token.trim().to_string(),
    })
}

/// Connect and complete the handshake, within `timeout`.
pub async fn connect(target: &NodeTarget, timeout: Duration) -> Result<Connection, TuiError> {
    if let NodeTarget::Remote(n) = target {
        if n.ssh.is_some() {
            // SSH has its own bounds per step (a cold node uploads binaries first); `timeout`
            // bounds the session handshake through the tunnel.
            return connect_ssh(n, timeout).await;
        }
    }
    let ep = endpoint(target).await?;
    let node = target.name().to_string();
    match tokio::time::timeout(timeout, Client::connect(&ep.url, &ep.token, CLIENT_NAME)).await {
        Err(_) => Err(TuiError::ConnectTimeout {
            node,
            url: ep.url,
            secs: timeout.as_secs(),
        }),
        Ok(Err(source)) => Err(TuiError::Connect { node, source }),
        Ok(Ok((client, incoming))) => Ok(Connection {
            client,
            incoming,
            url: ep.url,
        }),
    }
}

/// Why a connection attempt failed, without the node name (the dashboard shows it already).
pub fn reason(e: &TuiError) -> String {
    match e {
        TuiError::Connect { source, .. } => source.to_string(),
        TuiError::ConnectTimeout { url, secs, .. } => {
            format!("no answer from {url} within {secs} s")
        }
        TuiError::Ssh { source, .. } => source.to_string(),
        TuiError::TokenFile { path, source, .. } => {
            format!("cannot read token file {}: {source}", path.display())
        }
        other => other.to_string(),
    }
}

/// An SSH failure of node `node`, as the rest of rbee-tui reports it.
pub fn ssh_error(node: &str) -> impl Fn(SshError) -> TuiError + '_ {
    move |source| TuiError::Ssh {
        node: node.to_string(),
        source: Box::new(source),
    }
}

/// How an SSH node was brought up (for `nodes add`).
#[derive(Debug, Clone)]
pub struct BroughtUp {
    /// The agent now running there.
    pub agent: RemoteAgent,
    /// The fingerprint of a host key this bring-up trusted for the first time.
    pub learned_host_key: Option<String>,
    /// The agent's version, from the session's handshake.
    pub agent_version: String,
    /// The name the agent gives its machine.
    pub agent_node: String,
    /// What was found and done about the node's NVIDIA GPUs (`None`: it has none).
    pub gpu: Option<String>,
}

/// Connect to an SSH node, bring its agent up and check a session works: what `nodes add` does
/// before it records the node.
pub async fn bring_up(
    node: &NodeConfig,
    accept_new_host_key: bool,
    timeout: Duration,
) -> Result<BroughtUp, TuiError> {
    let err = ssh_error(&node.name);
    let mut opts = SshOptions::from_node(node).map_err(&err)?;
    opts.accept_new_host_key = accept_new_host_key;
    let conn = SshConn::open(&opts).await.map_err(&err)?;
    // Before the agent starts, so that it finds the CUDA worker when it looks for its backends.
    let gpu = crate::nodes::ssh::gpu::deliver(&conn, &opts).await;
    let agent = ensure_agent(&conn, &opts).await.map_err(&err)?;
    let session = tunnel_session(&conn, &agent, &node.name, timeout).await?;
    let up = BroughtUp {
        gpu,
        agent,
        learned_host_key: conn.learned_host_key.clone(),
        agent_version: session.client.agent_version.clone(),
        agent_node: session.client.node.clone(),
    };
    drop(session);
    conn.close().await;
    Ok(up)
}

/// A session to an SSH node's agent, bringing the agent up first when needed.
async fn connect_ssh(node: &NodeConfig, timeout: Duration) -> Result<Connection, TuiError> {
    let err = ssh_error(&node.name);
    let opts = SshOptions::from_node(node).map_err(&err)?;
    let conn = SshConn::open(&opts).await.map_err(&err)?;
    // As `nodes add` does: a CUDA worker built here since is installed at the next connection.
    if let Some(gpu) = crate::nodes::ssh::gpu::deliver(&conn, &opts).await {
        tracing::info!(node = %node.name, "{gpu}");
    }
    let agent = ensure_agent(&conn, &opts).await.map_err(&err)?;
    tunnel_session(&conn, &agent, &node.name, timeout).await
}

/// The session through a `direct-tcpip` channel to the agent's loopback port.
async fn tunnel_session(
    conn: &SshConn,
    agent: &RemoteAgent,
    node: &str,
    timeout: Duration,
) -> Result<Connection, TuiError> {
    let tunnel = conn
        .tunnel(agent.addr.port())
        .await
        .map_err(ssh_error(node))?;
    let url = format!("ws://{}", agent.addr);
    let shown = format!("ssh://{} → {}", conn.target(), agent.addr);
    // The agent's audit log names the SSH login as well as this machine's user.
    let mut identity = rbee_client::this_process(CLIENT_NAME);
    identity.ssh_user = Some(conn.user.clone());
    identity.ssh_key = Some(conn.key_fingerprint.clone());
    match tokio::time::timeout(
        timeout,
        Client::connect_stream_as(tunnel, &url, &agent.token, identity),
    )
    .await
    {
        Err(_) => Err(TuiError::ConnectTimeout {
            node: node.into(),
            url: shown,
            secs: timeout.as_secs(),
        }),
        Ok(Err(source)) => Err(TuiError::Connect {
            node: node.into(),
            source,
        }),
        Ok(Ok((client, incoming))) => Ok(Connection {
            client,
            incoming,
            url: shown,
        }),
    }
}
