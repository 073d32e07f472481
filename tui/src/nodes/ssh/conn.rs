//! The SSH connection to a node: TCP, host-key check, authentication, keepalives; running a
//! command with `sh -c`; a `direct-tcpip` tunnel to the agent's loopback port.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::{ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::auth::authenticate;
use super::error::SshError;
use super::remote::{self, KeyValues};
use super::trust::Trust;
use super::{SshOptions, SSH_COMMAND_TIMEOUT, SSH_CONNECT_TIMEOUT};

/// A dead connection is noticed after about `interval × (max + 1)`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_MAX: usize = 3;

/// An authenticated SSH connection to a node.
pub struct SshConn {
    handle: Arc<Handle<Trust>>,
    host: String,
    /// `USER@HOST:PORT`.
    target: String,
    /// Set when this connection accepted a host key seen for the first time.
    pub learned_host_key: Option<String>,
    /// The user this connection logged in as.
    pub user: String,
    /// The `SHA256:` fingerprint of the key it logged in with.
    pub key_fingerprint: String,
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status, when it exited.
    pub status: Option<u32>,
    /// The signal that killed it, if one did.
    pub signal: Option<String>,
    /// All of its stdout.
    pub stdout: String,
    /// All of its stderr.
    pub stderr: String,
}

impl Output {
    /// Exit status 0.
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
            let key = authenticate(&mut handle, opts, &host).await?;
            Ok::<_, SshError>((handle, key))
        };
        let (handle, key_fingerprint) = tokio::time::timeout(SSH_CONNECT_TIMEOUT, fut)
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
            user: opts.addr.user.clone(),
            key_fingerprint,
        })
    }

    /// `HOST` or `[HOST]:PORT`, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `USER@HOST:PORT`, as the session's address shows it.
    pub fn target(&self) -> &str {
        &self.target
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
    pub(super) async fn exec_kv(&self, what: &str, script: &str) -> Result<KeyValues, SshError> {
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
