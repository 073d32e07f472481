//! Remote nodes over SSH (russh; the `ssh` program is never run). For a node configured with
//! `ssh = "USER@HOST[:PORT]"` the dashboard and the subcommands:
//!
//! 1. connect and check the server's host key against `~/.ssh/known_hosts` and rbee's own
//!    known-hosts file ([`known_hosts`]); an unknown key is refused with its fingerprint unless the
//!    caller accepts new keys (`nodes add --accept-new-host-key`), a changed key is always refused;
//! 2. authenticate with the node's `identity` file, else the keys of a running ssh-agent, else
//!    `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`;
//! 3. make sure exactly one agent runs on the node ([`remote`]): reuse the running one, or start
//!    the installed one, or (none installed, or of another protocol version) check the node's
//!    architecture and free space, upload this machine's `rbee-agent` and `rbee-worker` and start
//!    that, detached, on the node's loopback;
//! 4. read the agent's token and open the WebSocket session through a `direct-tcpip` channel to
//!    the agent's loopback port, so no agent port is ever exposed on the network.
//!
//! The SSH connection lives exactly as long as the session's byte stream ([`Tunnel`] holds it),
//! so a dropped SSH connection ends the session and the caller's usual reconnect loop applies.
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rbee_client::{Client, Incoming};
use rbee_proto::config::{NodeConfig, SshAddr};
use rbee_proto::PROTOCOL_VERSION;
use russh::client::{self, Handle, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::error::TuiError;

pub mod known_hosts;
pub mod remote;

use known_hosts::{fingerprint, host_label, KnownHosts, Verdict};
use remote::KeyValues;

/// TCP connect plus SSH handshake plus authentication.
pub const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One short remote command (probe, version, start, stop).
pub const SSH_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A dead connection is noticed after about `interval × (max + 1)`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_MAX: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("host key of {host} is not known ({algo} {fingerprint}); if that is the node's key, run `rbee-tui nodes add` with --accept-new-host-key")]
    HostKeyUnknown {
        host: String,
        algo: String,
        fingerprint: String,
    },
    #[error("HOST KEY OF {host} HAS CHANGED: it now presents {algo} {fingerprint}, which does not match line {line} of {file}; someone may be intercepting the connection, refusing (if the node was reinstalled, delete that line and add the node again)")]
    HostKeyChanged {
        host: String,
        algo: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    #[error("{host} presented a host certificate; rbee checks plain host keys only")]
    HostCertificate { host: String },
    #[error("cannot use known-hosts file {path}: {reason}")]
    KnownHosts { path: PathBuf, reason: String },
    #[error("authentication as `{user}` refused by {host} (tried {tried})")]
    AuthRefused {
        user: String,
        host: String,
        tried: String,
    },
    #[error("cannot use identity {path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("remote architecture mismatch: {host} is {remote}, this rbee-agent is built for {local}; install an rbee-agent built for the node in {dir}/bin")]
    ArchMismatch {
        host: String,
        remote: String,
        local: String,
        dir: String,
    },
    #[error("no space to install rbee-agent on {host}: {detail}")]
    NoSpace { host: String, detail: String },
    #[error("rbee-agent failed to start on {host}; last lines of {log}: {tail}")]
    AgentFailed {
        host: String,
        log: String,
        tail: String,
    },
    #[error("{path} not found; build it (cargo build) or set RBEE_AGENT_BIN / RBEE_WORKER_BIN")]
    LocalBinary { path: PathBuf },
    #[error("on {host}: {what} failed: {detail}")]
    Remote {
        host: String,
        what: String,
        detail: String,
    },
    #[error("{what} on {host}: no answer within {secs} s")]
    Timeout {
        host: String,
        what: String,
        secs: u64,
    },
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub addr: SshAddr,
    pub identity: Option<PathBuf>,
    pub remote_dir: Option<String>,
    pub model_dirs: Vec<String>,
    pub known_hosts: KnownHosts,
    /// Trust (and record) a host key seen for the first time.
    pub accept_new_host_key: bool,
}

impl SshOptions {
    /// Options for a configured SSH node (`ssh` must be set).
    pub fn from_node(node: &NodeConfig) -> Result<Self, SshError> {
        let spec = node.ssh.as_deref().unwrap_or_default();
        let addr = SshAddr::parse(spec).map_err(|reason| SshError::Unreachable {
            target: spec.to_string(),
            reason,
        })?;
        Ok(Self {
            addr,
            identity: node.identity.clone(),
            remote_dir: node.remote_dir.clone(),
            model_dirs: node.model_dirs.clone(),
            known_hosts: KnownHosts::from_env(),
            accept_new_host_key: false,
        })
    }

    fn host(&self) -> String {
        host_label(&self.addr.host, self.addr.port)
    }
}

// ---------------------------------------------------------------------------------------------
// connection

/// The russh handler: only host-key checking is ours.
struct Trust {
    host: String,
    port: u16,
    known_hosts: KnownHosts,
    accept_new: bool,
    /// Fingerprint of a key this connection recorded as newly trusted.
    learned: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Trust {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let label = host_label(&self.host, self.port);
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(SshError::HostCertificate { host: label })
            }
        };
        let kh_err = |(path, reason)| SshError::KnownHosts { path, reason };
        let algo = key.algorithm().as_str().to_string();
        match self
            .known_hosts
            .check(&self.host, self.port, key)
            .map_err(kh_err)?
        {
            Verdict::Known => Ok(true),
            Verdict::Changed { file, line } => Err(SshError::HostKeyChanged {
                host: label,
                algo,
                fingerprint: fingerprint(key),
                file,
                line,
            }),
            Verdict::Unknown if self.accept_new => {
                self.known_hosts
                    .learn(&self.host, self.port, key)
                    .map_err(kh_err)?;
                tracing::info!(host = %label, fingerprint = %fingerprint(key), file = %self.known_hosts.own_file.display(), "accepted new host key");
                *self.learned.lock().unwrap() = Some(fingerprint(key));
                Ok(true)
            }
            Verdict::Unknown => Err(SshError::HostKeyUnknown {
                host: label,
                algo,
                fingerprint: fingerprint(key),
            }),
        }
    }
}

/// An authenticated SSH connection to a node.
pub struct SshConn {
    handle: Arc<Handle<Trust>>,
    host: String,
    /// `USER@HOST:PORT`.
    target: String,
    /// Set when this connection accepted a host key seen for the first time.
    pub learned_host_key: Option<String>,
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Exit status and the last lines of stderr, on one line.
    pub fn failure(&self) -> String {
        let how = match (&self.status, &self.signal) {
            (Some(s), _) => format!("exit status {s}"),
            (None, Some(sig)) => format!("killed by {sig}"),
            (None, None) => "no exit status".to_string(),
        };
        let err = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>();
        let tail = err[err.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        }
    }
}

impl SshConn {
    /// Connect, check the host key and authenticate, within `SSH_CONNECT_TIMEOUT`.
    pub async fn open(opts: &SshOptions) -> Result<Self, SshError> {
        let host = opts.host();
        let target = format!("{}:{}", opts.addr.host, opts.addr.port);
        let secs = SSH_CONNECT_TIMEOUT.as_secs();
        let socket = match tokio::time::timeout(
            SSH_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((opts.addr.host.as_str(), opts.addr.port)),
        )
        .await
        {
            Err(_) => {
                return Err(SshError::Unreachable {
                    target,
                    reason: format!("no answer within {secs} s"),
                })
            }
            Ok(Err(e)) => {
                return Err(SshError::Unreachable {
                    target,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = socket.set_nodelay(true);
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let learned = Arc::new(Mutex::new(None));
        let trust = Trust {
            host: opts.addr.host.clone(),
            port: opts.addr.port,
            known_hosts: opts.known_hosts.clone(),
            accept_new: opts.accept_new_host_key,
            learned: learned.clone(),
        };
        let fut = async {
            let mut handle = client::connect_stream(config, socket, trust)
                .await
                .map_err(|e| match e {
                    SshError::Ssh(e) => SshError::Unreachable {
                        target: target.clone(),
                        reason: format!("SSH handshake failed: {e}"),
                    },
                    other => other,
                })?;
            authenticate(&mut handle, opts, &host).await?;
            Ok::<_, SshError>(handle)
        };
        let handle = tokio::time::timeout(SSH_CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| SshError::Timeout {
                host: host.clone(),
                what: "SSH handshake".into(),
                secs,
            })??;
        let learned_host_key = learned.lock().unwrap().take();
        Ok(Self {
            handle: Arc::new(handle),
            host,
            target: opts.addr.to_string(),
            learned_host_key,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Run `script` with `sh -c` (whatever the login shell), feeding it `input` on stdin.
    pub async fn exec(
        &self,
        what: &str,
        script: &str,
        input: Option<tokio::fs::File>,
        limit: Duration,
    ) -> Result<Output, SshError> {
        let command = format!("sh -c {}", remote::sh_quote(script));
        let fut = async {
            let mut ch = self.handle.channel_open_session().await?;
            ch.exec(true, command).await?;
            let mut send_error = None;
            if let Some(file) = input {
                if let Err(e) = ch.data(file).await {
                    send_error = Some(e);
                }
            }
            let _ = ch.eof().await;
            let mut out = Output {
                status: None,
                signal: None,
                stdout: String::new(),
                stderr: String::new(),
            };
            let (mut so, mut se) = (Vec::new(), Vec::new());
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => so.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => se.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    _ => {}
                }
            }
            out.stdout = String::from_utf8_lossy(&so).into_owned();
            out.stderr = String::from_utf8_lossy(&se).into_owned();
            if out.status.is_none() && out.signal.is_none() {
                if let Some(e) = send_error {
                    return Err(SshError::Ssh(e));
                }
            }
            Ok(out)
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| SshError::Timeout {
                host: self.host.clone(),
                what: what.into(),
                secs: limit.as_secs(),
            })?
    }

    /// `exec` that must succeed; its stdout as `key=value` pairs.
    async fn exec_kv(&self, what: &str, script: &str) -> Result<KeyValues, SshError> {
        let out = self.exec(what, script, None, SSH_COMMAND_TIMEOUT).await?;
        if !out.success() {
            return Err(SshError::Remote {
                host: self.host.clone(),
                what: what.into(),
                detail: out.failure(),
            });
        }
        Ok(KeyValues::parse(&out.stdout))
    }

    /// A byte stream to `127.0.0.1:port` on the node (a `direct-tcpip` channel).
    pub async fn tunnel(&self, port: u16) -> Result<Tunnel, SshError> {
        let ch = self
            .handle
            .channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0)
            .await?;
        Ok(Tunnel {
            inner: ch.into_stream(),
            _ssh: self.handle.clone(),
        })
    }

    /// Close the connection politely.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// A `direct-tcpip` channel as a byte stream; it keeps its SSH connection alive.
pub struct Tunnel {
    inner: ChannelStream<Msg>,
    _ssh: Arc<Handle<Trust>>,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// authentication

/// The node's identity file, else every ssh-agent key, else the usual `~/.ssh/id_*` files.
async fn authenticate(
    handle: &mut Handle<Trust>,
    opts: &SshOptions,
    host: &str,
) -> Result<(), SshError> {
    let user = opts.addr.user.clone();
    let mut tried: Vec<String> = Vec::new();
    // An explicit identity is the only key tried, directly or (when it is encrypted) through the
    // ssh-agent holding it.
    let mut only_agent_key: Option<PublicKey> = None;
    if let Some(path) = &opts.identity {
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => {
                if try_key(handle, &user, key).await? {
                    return Ok(());
                }
                return Err(SshError::AuthRefused {
                    user,
                    host: host.into(),
                    tried: format!("key {}", path.display()),
                });
            }
            Err(russh::keys::Error::KeyIsEncrypted) => {
                let public = path.with_extension("pub");
                only_agent_key = Some(russh::keys::load_public_key(&public).map_err(|e| SshError::Identity {
                    path: path.clone(),
                    reason: format!("it is encrypted and its public half {} is unreadable ({e}); load it into ssh-agent", public.display()),
                })?);
            }
            Err(e) => {
                return Err(SshError::Identity {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
    match AgentClient::connect_env().await {
        Ok(mut agent) => {
            let ids = agent.request_identities().await.unwrap_or_default();
            for id in ids {
                let key = id.public_key().into_owned();
                if only_agent_key
                    .as_ref()
                    .is_some_and(|k| k.key_data() != key.key_data())
                {
                    continue;
                }
                if matches!(id, russh::keys::agent::AgentIdentity::Certificate { .. }) {
                    continue;
                }
                let hash = if key.algorithm().is_rsa() {
                    handle.best_supported_rsa_hash().await?.flatten()
                } else {
                    None
                };
                tried.push(format!("ssh-agent key {}", fingerprint(&key)));
                match handle
                    .authenticate_publickey_with(user.clone(), key, hash, &mut agent)
                    .await
                {
                    Ok(r) if r.success() => return Ok(()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("ssh-agent could not sign: {e}"),
                }
            }
        }
        Err(e) => tracing::debug!("no ssh-agent: {e}"),
    }
    if let Some(path) = &opts.identity {
        return Err(SshError::AuthRefused {
            user,
            host: host.into(),
            tried: format!("encrypted key {} through ssh-agent", path.display()),
        });
    }
    if let Some(home) = dirs::home_dir() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = home.join(".ssh").join(name);
            if !path.is_file() {
                continue;
            }
            match russh::keys::load_secret_key(&path, None) {
                Ok(key) => {
                    tried.push(format!("key {}", path.display()));
                    if try_key(handle, &user, key).await? {
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(path = %path.display(), "skipped: {e}"),
            }
        }
    }
    Err(SshError::AuthRefused {
        user,
        host: host.into(),
        tried: if tried.is_empty() {
            "no keys: pass --identity FILE or start ssh-agent".into()
        } else {
            tried.join(", ")
        },
    })
}

async fn try_key(
    handle: &mut Handle<Trust>,
    user: &str,
    key: russh::keys::PrivateKey,
) -> Result<bool, SshError> {
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    let r = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await?;
    Ok(r.success())
}

// ---------------------------------------------------------------------------------------------
// bring-up

/// The agent running on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteAgent {
    pub pid: u32,
    /// The agent's address on the node's loopback.
    pub addr: std::net::SocketAddr,
    pub token: String,
    /// This bring-up uploaded the binaries.
    pub installed: bool,
    /// This bring-up started the agent (else it was running).
    pub started: bool,
    /// The node's rbee directory, expanded.
    pub dir: String,
}

/// `rbee-agent` and `rbee-worker` on this machine, to upload.
fn local_binaries() -> Result<[(PathBuf, &'static str); 2], SshError> {
    let agent = crate::local::LocalOptions::from_env()
        .map(|o| o.agent_bin)
        .unwrap_or_else(|_| PathBuf::from("rbee-agent"));
    let worker = match std::env::var_os("RBEE_WORKER_BIN") {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => agent.with_file_name("rbee-worker"),
    };
    for p in [&agent, &worker] {
        if !p.is_file() {
            return Err(SshError::LocalBinary { path: p.clone() });
        }
    }
    Ok([(worker, "rbee-worker"), (agent, "rbee-agent")])
}

/// Make sure one agent of our protocol version runs on the node; install it if needed.
pub async fn ensure_agent(conn: &SshConn, opts: &SshOptions) -> Result<RemoteAgent, SshError> {
    let host = conn.host().to_string();
    let rd = opts.remote_dir.as_deref();
    let probe = conn.exec_kv("probe", &remote::probe_script(rd)).await?;
    let dir = probe
        .get("dir")
        .unwrap_or("~/.local/share/rbee")
        .to_string();
    if probe.get("os") != Some("Linux") {
        return Err(SshError::Remote {
            host,
            what: "probe".into(),
            detail: format!(
                "rbee-agent runs on Linux; the node says `{}`",
                probe.get("os").unwrap_or("?")
            ),
        });
    }
    let current = probe.get("bin").is_some()
        && probe.get("version").and_then(remote::protocol_of) == Some(PROTOCOL_VERSION);
    if current {
        if let (Some(pid), Some(addr), Some(token)) =
            (probe.get("pid"), probe.get("addr"), probe.get("token"))
        {
            if let (Ok(pid), Some(addr)) = (pid.parse(), parse_addr(addr)) {
                tracing::info!(%host, pid, "reusing the node's agent");
                return Ok(RemoteAgent {
                    pid,
                    addr,
                    token: token.into(),
                    installed: false,
                    started: false,
                    dir,
                });
            }
        }
    } else {
        install(conn, opts, &probe, &dir).await?;
    }
    let bin = format!("{dir}/bin/rbee-agent");
    let bin = if current {
        probe.get("bin").unwrap_or(&bin).to_string()
    } else {
        bin
    };
    let out = conn
        .exec(
            "starting rbee-agent",
            &remote::start_script(rd, &bin, &opts.model_dirs, !current),
            None,
            SSH_COMMAND_TIMEOUT,
        )
        .await?;
    let kv = KeyValues::parse(&out.stdout);
    if kv.get("failed").is_some() || kv.get("timeout").is_some() {
        let tail = kv
            .all("log")
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(SshError::AgentFailed {
            host,
            log: kv.get("log_file").unwrap_or("agent.log").to_string(),
            tail: if kv.get("timeout").is_some() {
                format!("no address after 30 s: {tail}")
            } else if tail.is_empty() {
                "(empty log)".into()
            } else {
                tail
            },
        });
    }
    if !out.success() {
        let detail = kv
            .get("error")
            .map(String::from)
            .unwrap_or_else(|| out.failure());
        return Err(SshError::Remote {
            host,
            what: "starting rbee-agent".into(),
            detail,
        });
    }
    let pid: Option<u32> = kv.get("pid").and_then(|p| p.parse().ok());
    let addr = kv.get("addr").and_then(parse_addr);
    let (Some(pid), Some(addr), Some(token)) = (pid, addr, kv.get("token")) else {
        return Err(SshError::Remote {
            host,
            what: "starting rbee-agent".into(),
            detail: format!("unexpected answer: {}", out.stdout.trim()),
        });
    };
    let started = kv.get("started").is_some_and(|s| s == pid.to_string());
    tracing::info!(%host, pid, installed = !current, started, "node agent up");
    Ok(RemoteAgent {
        pid,
        addr,
        token: token.into(),
        installed: !current,
        started,
        dir,
    })
}

fn parse_addr(text: &str) -> Option<std::net::SocketAddr> {
    let t = text.trim();
    let t = t.strip_prefix("ws://").unwrap_or(t);
    t.trim_end_matches('/').parse().ok()
}

/// Check the node can run our binaries and has room for them, then upload them.
async fn install(
    conn: &SshConn,
    opts: &SshOptions,
    probe: &KeyValues,
    dir: &str,
) -> Result<(), SshError> {
    let host = conn.host().to_string();
    let remote_arch = probe.get("arch").unwrap_or("unknown");
    let local = std::env::consts::ARCH;
    if remote::normalize_arch(remote_arch) != local {
        return Err(SshError::ArchMismatch {
            host,
            remote: remote_arch.into(),
            local: local.into(),
            dir: dir.into(),
        });
    }
    if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && probe.get("avx2") != Some("1")
    {
        return Err(SshError::ArchMismatch {
            host,
            remote: "x86_64 without AVX2/FMA".into(),
            local: "x86-64-v3 (AVX2, FMA)".into(),
            dir: dir.into(),
        });
    }
    let bins = local_binaries()?;
    let mut need = 0u64;
    for (path, _) in &bins {
        need += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let need_with_room = need + (16 << 20);
    if let Some(free) = probe.get("free_kb").and_then(|f| f.parse::<u64>().ok()) {
        if free * 1024 < need_with_room {
            return Err(SshError::NoSpace {
                host,
                detail: format!(
                    "{} needs {} MiB, {} MiB free",
                    dir,
                    need_with_room >> 20,
                    (free * 1024) >> 20
                ),
            });
        }
    }
    for (path, name) in &bins {
        upload(conn, opts, path, name).await?;
    }
    let out = conn
        .exec(
            "rbee-agent --version",
            &remote::version_script(opts.remote_dir.as_deref()),
            None,
            SSH_COMMAND_TIMEOUT,
        )
        .await?;
    let line = out.stdout.lines().next().unwrap_or("").to_string();
    if !out.success() || remote::protocol_of(&line) != Some(PROTOCOL_VERSION) {
        return Err(SshError::Remote {
            host,
            what: "running the uploaded rbee-agent".into(),
            detail: if out.success() {
                format!("it says `{line}`, expected protocol {PROTOCOL_VERSION}")
            } else {
                out.failure()
            },
        });
    }
    Ok(())
}

async fn upload(
    conn: &SshConn,
    opts: &SshOptions,
    path: &Path,
    name: &str,
) -> Result<(), SshError> {
    let host = conn.host().to_string();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| SshError::LocalBinary { path: path.into() })?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    // Generous: 60 s plus 1 s per 4 MiB.
    let limit = Duration::from_secs(60 + (size >> 22));
    let t0 = std::time::Instant::now();
    let out = conn
        .exec(
            &format!("uploading {name}"),
            &remote::upload_script(opts.remote_dir.as_deref(), name, size),
            Some(file),
            limit,
        )
        .await?;
    if !out.success() {
        let detail = out.failure();
        if detail.contains("No space left") || detail.contains("quota exceeded") {
            return Err(SshError::NoSpace { host, detail });
        }
        return Err(SshError::Remote {
            host,
            what: format!("uploading {name}"),
            detail,
        });
    }
    tracing::info!(%host, name, size, ms = t0.elapsed().as_millis() as u64, "uploaded");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// what the rest of rbee-tui calls

/// How an SSH node was brought up (for `nodes add`).
#[derive(Debug, Clone)]
pub struct BroughtUp {
    pub agent: RemoteAgent,
    pub learned_host_key: Option<String>,
    pub agent_version: String,
    pub agent_node: String,
}

/// Connect to an SSH node, bring its agent up and check a session works: what `nodes add` does
/// before it records the node.
pub async fn bring_up(
    node: &NodeConfig,
    accept_new_host_key: bool,
    timeout: Duration,
) -> Result<BroughtUp, TuiError> {
    let err = |source| TuiError::Ssh {
        node: node.name.clone(),
        source: Box::new(source),
    };
    let mut opts = SshOptions::from_node(node).map_err(err)?;
    opts.accept_new_host_key = accept_new_host_key;
    let conn = SshConn::open(&opts).await.map_err(err)?;
    let agent = ensure_agent(&conn, &opts).await.map_err(err)?;
    let (client, _incoming, _url) = session(&conn, &agent, &node.name, timeout).await?;
    let up = BroughtUp {
        agent,
        learned_host_key: conn.learned_host_key.clone(),
        agent_version: client.agent_version.clone(),
        agent_node: client.node.clone(),
    };
    drop(client);
    conn.close().await;
    Ok(up)
}

/// A session to an SSH node's agent, bringing the agent up first when needed. The returned
/// string describes the path (`ssh://USER@HOST:PORT → 127.0.0.1:P`).
pub async fn connect_node(
    node: &NodeConfig,
    timeout: Duration,
) -> Result<(Client, mpsc::Receiver<Incoming>, String), TuiError> {
    let err = |source| TuiError::Ssh {
        node: node.name.clone(),
        source: Box::new(source),
    };
    let opts = SshOptions::from_node(node).map_err(err)?;
    let conn = SshConn::open(&opts).await.map_err(err)?;
    let agent = ensure_agent(&conn, &opts).await.map_err(err)?;
    session(&conn, &agent, &node.name, timeout).await
}

async fn session(
    conn: &SshConn,
    agent: &RemoteAgent,
    node: &str,
    timeout: Duration,
) -> Result<(Client, mpsc::Receiver<Incoming>, String), TuiError> {
    let tunnel = conn
        .tunnel(agent.addr.port())
        .await
        .map_err(|source| TuiError::Ssh {
            node: node.into(),
            source: Box::new(source),
        })?;
    let url = format!("ws://{}", agent.addr);
    let shown = format!("ssh://{} → {}", conn.target, agent.addr);
    match tokio::time::timeout(
        timeout,
        Client::connect_stream(tunnel, &url, &agent.token, crate::session::CLIENT_NAME),
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
        Ok(Ok((client, incoming))) => Ok((client, incoming, shown)),
    }
}

/// A node the operator asked the dashboard to add (`:add …`).
#[derive(Debug, Clone, PartialEq)]
pub struct AddNodeRequest {
    pub node: NodeConfig,
    pub accept_new_host_key: bool,
}

impl AddNodeRequest {
    /// `NAME USER@HOST[:PORT] [--identity FILE] [--accept-new-host-key] [--ephemeral]
    /// [--remote-dir DIR] [--model-dir DIR]…`, as after `:add`.
    pub fn parse(words: &[&str]) -> Result<Self, String> {
        const USAGE: &str = "usage: :add NAME USER@HOST[:PORT] [--identity FILE] [--accept-new-host-key] [--ephemeral] [--remote-dir DIR] [--model-dir DIR]";
        let (Some(name), Some(ssh)) = (words.first(), words.get(1)) else {
            return Err(USAGE.into());
        };
        let mut node = NodeConfig {
            name: name.to_string(),
            ssh: Some(ssh.to_string()),
            ..Default::default()
        };
        let mut accept = false;
        let mut rest = words[2..].iter();
        while let Some(w) = rest.next() {
            let mut value = |flag: &str| {
                rest.next()
                    .map(|v| v.to_string())
                    .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
            };
            match *w {
                "--accept-new-host-key" => accept = true,
                "--ephemeral" => node.ephemeral = true,
                "--identity" => node.identity = Some(PathBuf::from(value("--identity")?)),
                "--remote-dir" => node.remote_dir = Some(value("--remote-dir")?),
                "--model-dir" => node.model_dirs.push(value("--model-dir")?),
                other => return Err(format!("unknown option {other}; {USAGE}")),
            }
        }
        node.validate()?;
        Ok(Self {
            node,
            accept_new_host_key: accept,
        })
    }
}

/// Bring the requested node up and, when that worked, record it in the config file at `config`:
/// what `nodes add --ssh` does, for the dashboard.
pub async fn add_node(
    config: &Path,
    req: AddNodeRequest,
    timeout: Duration,
) -> Result<(NodeConfig, BroughtUp), TuiError> {
    // Refuse a duplicate before touching the node.
    crate::config::ConfigFile::load(config)?.add_node(req.node.clone())?;
    let up = bring_up(&req.node, req.accept_new_host_key, timeout).await?;
    // Read again: the file may have changed while the node came up.
    let mut cf = crate::config::ConfigFile::load(config)?;
    cf.add_node(req.node.clone())?;
    cf.save()?;
    tracing::info!(node = %req.node.name, config = %cf.path.display(), "added SSH node from the dashboard");
    Ok((req.node, up))
}

/// What `nodes stop` found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// The agent's pid, `None` when no agent was running.
    pub pid: Option<u32>,
    pub workers: Vec<u32>,
}

/// Stop the node's agent and its workers and check they are gone.
pub async fn stop_node(node: &NodeConfig) -> Result<Stopped, TuiError> {
    let err = |source| TuiError::Ssh {
        node: node.name.clone(),
        source: Box::new(source),
    };
    let opts = SshOptions::from_node(node).map_err(err)?;
    let conn = SshConn::open(&opts).await.map_err(err)?;
    let kv = conn
        .exec_kv(
            "stopping rbee-agent",
            &remote::stop_script(opts.remote_dir.as_deref()),
        )
        .await
        .map_err(err)?;
    conn.close().await;
    if kv.get("running") == Some("0") {
        return Ok(Stopped {
            pid: None,
            workers: vec![],
        });
    }
    let left = kv.pids("left");
    if !left.is_empty() {
        return Err(err(SshError::Remote {
            host: opts.host(),
            what: "stopping rbee-agent".into(),
            detail: format!("processes still alive after SIGKILL: {left:?}"),
        }));
    }
    Ok(Stopped {
        pid: kv.get("pid").and_then(|p| p.parse().ok()),
        workers: kv.pids("workers"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_request_parses_flags_and_refuses_junk() {
        let r = AddNodeRequest::parse(&[
            "gpu",
            "me@h:2222",
            "--identity",
            "/k",
            "--ephemeral",
            "--accept-new-host-key",
            "--model-dir",
            "/m",
        ])
        .unwrap();
        assert!(r.accept_new_host_key);
        assert_eq!(r.node.ssh.as_deref(), Some("me@h:2222"));
        assert_eq!(r.node.identity.as_deref(), Some(Path::new("/k")));
        assert!(r.node.ephemeral);
        assert_eq!(r.node.model_dirs, vec!["/m".to_string()]);
        assert!(AddNodeRequest::parse(&["gpu"])
            .unwrap_err()
            .contains("usage"));
        assert!(AddNodeRequest::parse(&["gpu", "nohost"])
            .unwrap_err()
            .contains("`ssh`"));
        assert!(AddNodeRequest::parse(&["gpu", "me@h", "--identity"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(AddNodeRequest::parse(&["gpu", "me@h", "--bogus"])
            .unwrap_err()
            .contains("unknown option"));
    }
}
