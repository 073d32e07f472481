//! Where the dashboard's node list lives and how it is edited. The schema itself is
//! `rbee_proto::config::TuiConfig`; this module only finds, reads and atomically rewrites the file.
use std::io::Write;
use std::path::{Path, PathBuf};

use rbee_proto::config::{NodeConfig, TuiConfig};

use crate::nodes::error::TuiError;

/// Name of the node used when the config lists none: the agent on this machine.
pub const LOCAL_NODE: &str = "local";

/// `--config FILE` / `RBEE_CONFIG` (clap fills both into `explicit`), else
/// `<config dir>/rbee/tui.toml`.
pub fn config_path(explicit: Option<&Path>) -> Result<PathBuf, TuiError> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None => dirs::config_dir()
            .map(|d| d.join("rbee").join("tui.toml"))
            .ok_or(TuiError::NoConfigDir),
    }
}

/// The config file and its parsed contents. A missing file is an empty config, so a first run
/// needs nothing set up.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it is read from and written to.
    pub path: PathBuf,
    /// What it says.
    pub config: TuiConfig,
}

impl ConfigFile {
    /// Read and check the file at `path` (missing: empty).
    pub fn load(path: &Path) -> Result<Self, TuiError> {
        let config = match std::fs::read_to_string(path) {
            Ok(text) => TuiConfig::from_toml(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TuiConfig::default(),
            Err(source) => {
                return Err(rbee_proto::config::ConfigError::Read {
                    path: path.into(),
                    source,
                }
                .into())
            }
        };
        Ok(Self {
            path: path.into(),
            config,
        })
    }

    /// Write through a temporary file of its own and rename, so a crash never leaves half a
    /// config; under the file's lock (see [`ConfigFile::edit`]). The file is private (0600): it
    /// names token files and hosts.
    pub fn save(&self) -> Result<(), TuiError> {
        let _lock = self.lock()?;
        self.write()
    }

    /// Read-modify-write under an exclusive lock on the sibling `<file>.lock`: the file is read
    /// again under the lock, `change` applied to it and the result written, so concurrent
    /// editors (parallel `nodes add`, the dashboard's `:add`) never lose each other's changes.
    pub fn edit<T>(
        &mut self,
        change: impl FnOnce(&mut ConfigFile) -> Result<T, TuiError>,
    ) -> Result<T, TuiError> {
        let _lock = self.lock()?;
        *self = ConfigFile::load(&self.path)?;
        let out = change(self)?;
        self.write()?;
        Ok(out)
    }

    fn write_error(&self, source: std::io::Error) -> TuiError {
        TuiError::ConfigWrite {
            path: self.path.clone(),
            source,
        }
    }

    /// Hold the config's lock file (flock, exclusive) until the returned file is dropped.
    fn lock(&self) -> Result<std::fs::File, TuiError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.write_error(e))?;
        }
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.path.with_file_name(name))
            .map_err(|e| self.write_error(e))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(self.write_error(e));
            }
        }
    }

    /// The write itself (the caller holds the lock): a temporary file unique to this process,
    /// created 0600, synced, renamed over the config.
    fn write(&self) -> Result<(), TuiError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp.{}", std::process::id()));
        let tmp = self.path.with_file_name(name);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            // A stale temporary file of an earlier process keeps its mode on open: set it.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(self.config.to_toml().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| self.write_error(e))
    }

    /// Add a node, refusing a name that is taken.
    pub fn add_node(&mut self, node: NodeConfig) -> Result<(), TuiError> {
        if self.config.nodes.iter().any(|n| n.name == node.name) {
            return Err(TuiError::DuplicateNode {
                name: node.name,
                path: self.path.clone(),
            });
        }
        self.config.nodes.push(node);
        Ok(())
    }

    /// Remove the named node; it is returned.
    pub fn remove_node(&mut self, name: &str) -> Result<NodeConfig, TuiError> {
        let i = self
            .config
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| TuiError::UnknownNode {
                name: name.into(),
                known: known_names(&self.config),
            })?;
        Ok(self.config.nodes.remove(i))
    }

    /// The nodes to follow: the configured ones, or the local agent when there are none.
    pub fn targets(&self) -> Vec<NodeTarget> {
        if self.config.nodes.is_empty() {
            vec![NodeTarget::Local]
        } else {
            self.config
                .nodes
                .iter()
                .cloned()
                .map(NodeTarget::Remote)
                .collect()
        }
    }

    /// The targets a `--node NAME` option selects (all of them when absent).
    pub fn select(&self, name: Option<&str>) -> Result<Vec<NodeTarget>, TuiError> {
        let all = self.targets();
        match name {
            None => Ok(all),
            Some(name) => match all.into_iter().find(|t| t.name() == name) {
                Some(t) => Ok(vec![t]),
                None => Err(TuiError::UnknownNode {
                    name: name.into(),
                    known: self.known(),
                }),
            },
        }
    }

    /// Exactly one target: the named one, or the only one there is.
    pub fn select_one(&self, name: Option<&str>) -> Result<NodeTarget, TuiError> {
        let mut ts = self.select(name)?;
        if ts.len() == 1 {
            Ok(ts.remove(0))
        } else {
            Err(TuiError::NodeRequired {
                known: self.known(),
            })
        }
    }

    fn known(&self) -> String {
        if self.config.nodes.is_empty() {
            format!("{LOCAL_NODE} (no nodes configured)")
        } else {
            known_names(&self.config)
        }
    }
}

fn known_names(cfg: &TuiConfig) -> String {
    if cfg.nodes.is_empty() {
        return "none".into();
    }
    cfg.nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuse remote paths the node's shell scripts and probe output cannot carry: a newline or
/// other control character in `remote_dir` or a model dir (the probe answers in key=value
/// lines, which such a path would forge).
pub fn check_remote_paths(node: &NodeConfig, path: &Path) -> Result<(), TuiError> {
    let dirs = node.remote_dir.iter().map(|d| ("remote_dir", d));
    let models = node.model_dirs.iter().map(|d| ("model_dirs", d));
    for (key, dir) in dirs.chain(models) {
        if dir.chars().any(char::is_control) {
            return Err(rbee_proto::config::ConfigError::Invalid {
                path: path.into(),
                message: format!(
                    "node `{}`: key `{key}`: `{}` contains a newline or control character",
                    rbee_proto::fmt::printable(&node.name),
                    rbee_proto::fmt::printable(dir)
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// An SSH node to add, as `nodes add --ssh` or `:add` describe it (`nodes::add` brings it up).
#[derive(Debug, Clone, PartialEq)]
pub struct AddNodeRequest {
    /// The node as it will be recorded.
    pub node: NodeConfig,
    /// Trust (and record) the node's host key if nobody has seen it yet.
    pub accept_new_host_key: bool,
}

/// A node the dashboard or a subcommand talks to.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeTarget {
    /// A configured agent: URL plus token file.
    Remote(NodeConfig),
    /// The agent on this machine, started on demand (see `crate::nodes::local`).
    Local,
}

impl NodeTarget {
    /// The node's name (`local` for the local agent).
    pub fn name(&self) -> &str {
        match self {
            NodeTarget::Remote(n) => &n.name,
            NodeTarget::Local => LOCAL_NODE,
        }
    }

    /// What to show as the address before a connection exists.
    pub fn display_url(&self) -> String {
        match self {
            NodeTarget::Remote(n) => match &n.ssh {
                Some(addr) => format!("ssh://{addr}"),
                None => n.url.clone(),
            },
            NodeTarget::Local => "local agent".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            url: "ws://127.0.0.1:1".into(),
            token_file: "/t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn missing_file_is_empty_and_means_local() {
        let dir = tempfile::tempdir().unwrap();
        let cf = ConfigFile::load(&dir.path().join("nope.toml")).unwrap();
        assert!(cf.config.nodes.is_empty());
        assert_eq!(cf.targets(), vec![NodeTarget::Local]);
        assert_eq!(cf.select_one(None).unwrap(), NodeTarget::Local);
        assert_eq!(cf.select_one(Some("local")).unwrap(), NodeTarget::Local);
    }

    #[test]
    fn add_save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tui.toml");
        let mut cf = ConfigFile::load(&path).unwrap();
        cf.add_node(node("a")).unwrap();
        cf.add_node(node("b")).unwrap();
        assert!(matches!(
            cf.add_node(node("a")),
            Err(TuiError::DuplicateNode { .. })
        ));
        cf.save().unwrap();
        let mut back = ConfigFile::load(&path).unwrap();
        assert_eq!(back.config.nodes.len(), 2);
        assert!(matches!(
            back.select_one(None),
            Err(TuiError::NodeRequired { .. })
        ));
        back.remove_node("a").unwrap();
        assert!(matches!(
            back.remove_node("zz"),
            Err(TuiError::UnknownNode { .. })
        ));
        assert_eq!(back.select_one(None).unwrap().name(), "b");
    }
}
