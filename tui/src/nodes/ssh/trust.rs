//! Host-key checking, the one part of the SSH handshake that is ours: the key must be in
//! `~/.ssh/known_hosts` or rbee's own file, or (when the caller accepts new keys) be seen for
//! the first time, in which case it is recorded.
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::PublicKeyOrCertificate;

use super::error::SshError;
use super::known_hosts::{fingerprint, host_label, KnownHosts, Verdict};

/// The russh handler: only host-key checking is ours.
pub(super) struct Trust {
    /// The host as configured.
    pub(super) host: String,
    /// Its SSH port.
    pub(super) port: u16,
    /// Where keys are looked up and learned.
    pub(super) known_hosts: KnownHosts,
    /// Record a key seen for the first time instead of refusing it.
    pub(super) accept_new: bool,
    /// Fingerprint of a key this connection recorded as newly trusted.
    pub(super) learned: Arc<Mutex<Option<String>>>,
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
