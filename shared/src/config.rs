//! Configuration files: the agent's and the dashboard's. TOML, unknown keys refused, and every
//! error names the key that is wrong.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::RestartPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `rbee-agent` settings. Every field has a default so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Address for sessions (and `/metrics`). Loopback unless you add TLS or a tunnel.
    pub listen: String,
    /// Name this node reports; defaults to the host name.
    pub node_name: Option<String>,
    /// Directories searched for models (`*.gguf` files, safetensors directories). Spawn requests
    /// for local paths must point inside one of them.
    pub model_dirs: Vec<PathBuf>,
    /// Path of the `rbee-worker` binary; defaults to the one beside `rbee-agent`.
    pub worker_bin: Option<PathBuf>,
    pub heartbeat_ms: u64,
    pub telemetry_ms: u64,
    /// Requests queued per worker before answering `busy`.
    pub worker_queue: usize,
    /// Time a worker gets to exit after SIGTERM before SIGKILL.
    pub stop_grace_ms: u64,
    /// Extra bytes required beyond the model size before admitting a spawn.
    pub admission_headroom_bytes: u64,
    pub restart: RestartPolicy,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7733".into(),
            node_name: None,
            model_dirs: Vec::new(),
            worker_bin: None,
            heartbeat_ms: 2000,
            telemetry_ms: 1000,
            worker_queue: 8,
            stop_grace_ms: 3000,
            admission_headroom_bytes: 256 << 20,
            restart: RestartPolicy::default(),
        }
    }
}

impl AgentConfig {
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.into(), message: one_line(&e, text) })?;
        cfg.validate().map_err(|message| ConfigError::Invalid { path: path.into(), message })?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(path, &text)
    }

    /// Checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("key `listen`: `{}` is not an address like 127.0.0.1:7733", self.listen));
        }
        if self.heartbeat_ms < 50 {
            return Err("key `heartbeat_ms`: must be at least 50".into());
        }
        if self.telemetry_ms < 50 {
            return Err("key `telemetry_ms`: must be at least 50".into());
        }
        if self.worker_queue == 0 {
            return Err("key `worker_queue`: must be at least 1".into());
        }
        if self.restart.initial_backoff_ms == 0 || self.restart.max_backoff_ms < self.restart.initial_backoff_ms {
            return Err("key `restart.max_backoff_ms`: must be ≥ `restart.initial_backoff_ms` > 0".into());
        }
        Ok(())
    }
}

/// A node the dashboard connects to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// `ws://HOST:PORT` of the agent.
    pub url: String,
    /// File holding the agent's bearer token.
    pub token_file: PathBuf,
}

/// `rbee-tui` settings: the nodes it follows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuiConfig {
    pub nodes: Vec<NodeConfig>,
}

impl TuiConfig {
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: path.into(), message: one_line(&e, text) })?;
        let mut seen = std::collections::HashSet::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            if !seen.insert(&n.name) {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    message: format!("key `nodes[{i}].name`: duplicate node name `{}`", n.name),
                });
            }
        }
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// One line: the parser's message plus the line of the file it points at, which holds the key.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            format!("line {line_no} `{line}`: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let c = AgentConfig::from_toml("a.toml".as_ref(), "").unwrap();
        assert_eq!(c, AgentConfig::default());
    }

    #[test]
    fn example_config_is_valid_and_documents_the_defaults() {
        let text = include_str!("../../assets/agent.example.toml");
        let c = AgentConfig::from_toml("agent.example.toml".as_ref(), text).unwrap();
        assert_eq!(c, AgentConfig::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = AgentConfig::from_toml("a.toml".as_ref(), "heartbeat_msec = 3").unwrap_err();
        assert!(e.to_string().contains("heartbeat_msec"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = AgentConfig::from_toml("a.toml".as_ref(), "[restart]\nmax_restarts = \"many\"").unwrap_err();
        assert!(e.to_string().contains("max_restarts"), "{e}");
    }

    #[test]
    fn bad_listen_is_named() {
        let e = AgentConfig::from_toml("a.toml".as_ref(), "listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
    }

    #[test]
    fn duplicate_node_is_named() {
        let t = "[[nodes]]\nname='a'\nurl='ws://x'\ntoken_file='t'\n[[nodes]]\nname='a'\nurl='ws://y'\ntoken_file='t'\n";
        let e = TuiConfig::from_toml("t.toml".as_ref(), t).unwrap_err();
        assert!(e.to_string().contains("nodes[1].name"), "{e}");
    }
}
