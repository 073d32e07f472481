//! Host trust: a server's key is looked up in the user's `~/.ssh/known_hosts` and in rbee's own
//! known-hosts file (`$RBEE_KNOWN_HOSTS`, default `<config dir>/rbee/known_hosts`), which is the only
//! file rbee ever writes. Entries use OpenSSH's format, `[host]:port` for ports other than 22, and
//! hashed host names are understood.
use std::path::{Path, PathBuf};

use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::ssh_key::HashAlg;
use russh::keys::PublicKey;

/// Environment override for rbee's own known-hosts file.
pub const ENV_KNOWN_HOSTS: &str = "RBEE_KNOWN_HOSTS";

/// The files consulted, in order; the last one is rbee's own and receives accepted keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownHosts {
    /// `~/.ssh/known_hosts`, read only.
    pub user_file: Option<PathBuf>,
    /// rbee's own file (`$RBEE_KNOWN_HOSTS`), where accepted keys go.
    pub own_file: PathBuf,
}

impl KnownHosts {
    /// `~/.ssh/known_hosts` and `$RBEE_KNOWN_HOSTS` or `<config dir>/rbee/known_hosts`.
    pub fn from_env() -> Self {
        let user_file = dirs::home_dir().map(|h| h.join(".ssh").join("known_hosts"));
        let own_file = match std::env::var_os(ENV_KNOWN_HOSTS) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => dirs::config_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("rbee")
                .join("known_hosts"),
        };
        Self {
            user_file,
            own_file,
        }
    }

    fn files(&self) -> impl Iterator<Item = &Path> {
        self.user_file
            .iter()
            .map(PathBuf::as_path)
            .chain(std::iter::once(self.own_file.as_path()))
    }

    /// What the files say about `key` for `host:port`. A key listed in any file is known; else a
    /// listed key of the same algorithm means the key changed; else the host (or this key type)
    /// is unknown.
    pub fn check(
        &self,
        host: &str,
        port: u16,
        key: &PublicKey,
    ) -> Result<Verdict, (PathBuf, String)> {
        let mut changed = None;
        for file in self.files() {
            let entries = known_host_keys_path(host, port, file)
                .map_err(|e| (file.to_path_buf(), e.to_string()))?;
            for (line, recorded) in entries {
                if recorded == *key {
                    return Ok(Verdict::Known);
                }
                if recorded.algorithm() == key.algorithm() && changed.is_none() {
                    changed = Some((file.to_path_buf(), file_line(file, line)));
                }
            }
        }
        Ok(match changed {
            Some((file, line)) => Verdict::Changed { file, line },
            None => Verdict::Unknown,
        })
    }

    /// Record `key` for `host:port` in rbee's own file (created 0600 with its directory).
    pub fn learn(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), (PathBuf, String)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: &dyn std::fmt::Display| (self.own_file.clone(), e.to_string());
        if let Some(dir) = self.own_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let before = std::fs::read(&self.own_file).unwrap_or_default();
        let mut line = String::new();
        if before.last().is_some_and(|b| *b != b'\n') {
            line.push('\n');
        }
        let public = key.to_openssh().map_err(|e| err(&e))?;
        line.push_str(&format!("{} {}\n", host_label(host, port), public.trim()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.own_file)
            .map_err(|e| err(&e))?;
        f.write_all(line.as_bytes()).map_err(|e| err(&e))
    }
}

/// russh numbers entries without counting `#` comment lines; turn that into the file's line.
fn file_line(file: &Path, entry: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(file) else {
        return entry;
    };
    let mut seen = 0;
    for (i, l) in text.lines().enumerate() {
        if !l.starts_with('#') {
            seen += 1;
            if seen == entry {
                return i + 1;
            }
        }
    }
    entry
}

/// What the known-hosts files say about a host's key.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// This key is recorded for the host.
    Known,
    /// Nothing is recorded for the host (or only keys of other types).
    Unknown,
    /// A different key of the same type is recorded at `file:line`.
    Changed {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
    },
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How OpenSSH names a host in known_hosts: `host`, or `[host]:port` off port 22.
pub fn host_label(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G2sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn unknown_then_learned_then_known_and_changed() {
        let dir = tempfile::tempdir().unwrap();
        let kh = KnownHosts {
            user_file: Some(dir.path().join("user")),
            own_file: dir.path().join("own/known_hosts"),
        };
        assert_eq!(kh.check("h", 2222, &key(K1)).unwrap(), Verdict::Unknown);
        kh.learn("h", 2222, &key(K1)).unwrap();
        let text = std::fs::read_to_string(&kh.own_file).unwrap();
        assert!(text.starts_with("[h]:2222 ssh-ed25519 "), "{text}");
        assert_eq!(kh.check("h", 2222, &key(K1)).unwrap(), Verdict::Known);
        assert_eq!(
            kh.check("h", 22, &key(K1)).unwrap(),
            Verdict::Unknown,
            "port matters"
        );
        assert_eq!(
            kh.check("h", 2222, &key(K2)).unwrap(),
            Verdict::Changed {
                file: kh.own_file.clone(),
                line: 1
            }
        );
    }

    #[test]
    fn user_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user");
        std::fs::write(&user, format!("# comment\nother {K2}\nh {K1}\n")).unwrap();
        let kh = KnownHosts {
            user_file: Some(user.clone()),
            own_file: dir.path().join("own"),
        };
        assert_eq!(kh.check("h", 22, &key(K1)).unwrap(), Verdict::Known);
        assert_eq!(
            kh.check("h", 22, &key(K2)).unwrap(),
            Verdict::Changed {
                file: user,
                line: 3
            }
        );
    }

    #[test]
    fn fingerprint_is_sha256() {
        assert!(fingerprint(&key(K1)).starts_with("SHA256:"));
        assert_eq!(host_label("h", 22), "h");
        assert_eq!(host_label("h", 2), "[h]:2");
    }
}
