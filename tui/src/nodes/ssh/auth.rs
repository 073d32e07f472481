//! Authentication: the node's identity file, else every ssh-agent key, else the usual
//! `~/.ssh/id_*` files.
use std::path::Path;
use std::sync::Arc;

use russh::client::Handle;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};

use super::error::SshError;
use super::known_hosts::fingerprint;
use super::trust::Trust;
use super::SshOptions;

/// The node's identity file, else every ssh-agent key, else the usual `~/.ssh/id_*` files.
/// Returns the `SHA256:` fingerprint of the key the server accepted.
pub(super) async fn authenticate(
    handle: &mut Handle<Trust>,
    opts: &SshOptions,
    host: &str,
) -> Result<String, SshError> {
    let user = opts.addr.user.clone();
    let refused = |tried: String| SshError::AuthRefused {
        user: user.clone(),
        host: host.into(),
        tried,
    };
    // An explicit identity is the only key tried, directly or (when it is encrypted) through the
    // ssh-agent holding it.
    let mut only_agent_key: Option<PublicKey> = None;
    if let Some(path) = &opts.identity {
        match identity(handle, &user, path).await? {
            Identity::Accepted(key) => return Ok(key),
            Identity::Refused => return Err(refused(format!("key {}", path.display()))),
            Identity::Encrypted(public) => only_agent_key = Some(public),
        }
    }
    let mut tried: Vec<String> = Vec::new();
    if let Some(key) = agent_keys(handle, &user, only_agent_key.as_ref(), &mut tried).await? {
        return Ok(key);
    }
    if let Some(path) = &opts.identity {
        let how = format!("encrypted key {} through ssh-agent", path.display());
        return Err(refused(how));
    }
    if let Some(key) = default_keys(handle, &user, &mut tried).await? {
        return Ok(key);
    }
    Err(refused(if tried.is_empty() {
        "no keys: pass --identity FILE or start ssh-agent".into()
    } else {
        tried.join(", ")
    }))
}

/// What the configured identity file came to.
enum Identity {
    /// Accepted; its fingerprint.
    Accepted(String),
    Refused,
    /// It needs a passphrase: only the ssh-agent can use it, by this public half.
    Encrypted(PublicKey),
}

async fn identity(
    handle: &mut Handle<Trust>,
    user: &str,
    path: &Path,
) -> Result<Identity, SshError> {
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => Ok(if let Some(fp) = try_key(handle, user, key).await? {
            Identity::Accepted(fp)
        } else {
            Identity::Refused
        }),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let public = path.with_extension("pub");
            let key = russh::keys::load_public_key(&public).map_err(|e| SshError::Identity {
                path: path.into(),
                reason: format!("it is encrypted and its public half {} is unreadable ({e}); load it into ssh-agent", public.display()),
            })?;
            Ok(Identity::Encrypted(key))
        }
        Err(e) => Err(SshError::Identity {
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

/// Every key of a running ssh-agent (only `only` when set); the fingerprint of the one accepted.
async fn agent_keys(
    handle: &mut Handle<Trust>,
    user: &str,
    only: Option<&PublicKey>,
    tried: &mut Vec<String>,
) -> Result<Option<String>, SshError> {
    let mut agent = match AgentClient::connect_env().await {
        Ok(agent) => agent,
        Err(e) => {
            tracing::debug!("no ssh-agent: {e}");
            return Ok(None);
        }
    };
    let ids = agent.request_identities().await.unwrap_or_default();
    for id in ids {
        let key = id.public_key().into_owned();
        if only.is_some_and(|k| k.key_data() != key.key_data()) {
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
        let fp = fingerprint(&key);
        tried.push(format!("ssh-agent key {fp}"));
        match handle
            .authenticate_publickey_with(user.to_string(), key, hash, &mut agent)
            .await
        {
            Ok(r) if r.success() => return Ok(Some(fp)),
            Ok(_) => {}
            Err(e) => tracing::warn!("ssh-agent could not sign: {e}"),
        }
    }
    Ok(None)
}

/// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`, those that exist and need no passphrase.
async fn default_keys(
    handle: &mut Handle<Trust>,
    user: &str,
    tried: &mut Vec<String>,
) -> Result<Option<String>, SshError> {
    let Some(home) = dirs::home_dir() else {
        return Ok(None);
    };
    for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let path = home.join(".ssh").join(name);
        if !path.is_file() {
            continue;
        }
        match russh::keys::load_secret_key(&path, None) {
            Ok(key) => {
                tried.push(format!("key {}", path.display()));
                if let Some(fp) = try_key(handle, user, key).await? {
                    return Ok(Some(fp));
                }
            }
            Err(e) => tracing::debug!(path = %path.display(), "skipped: {e}"),
        }
    }
    Ok(None)
}

async fn try_key(
    handle: &mut Handle<Trust>,
    user: &str,
    key: russh::keys::PrivateKey,
) -> Result<Option<String>, SshError> {
    let fp = fingerprint(key.public_key());
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    let r = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await?;
    Ok(r.success().then_some(fp))
}
