//! Configuration files: the agent's and the dashboard's. TOML, unknown keys refused, and every
//! error names the key that is wrong.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::RestartPolicy;

#[derive(Debug, thiserror::Error)]
/// Why a configuration file was not taken; each names the file and, when invalid, the key.
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but is not valid TOML or breaks a rule.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
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
    /// Interval of the worker heartbeats the agent asks for, in milliseconds.
    pub heartbeat_ms: u64,
    /// Interval of telemetry samples pushed to subscribed sessions, in milliseconds.
    pub telemetry_ms: u64,
    /// Requests queued per worker before answering `busy`.
    pub worker_queue: usize,
    /// Time a worker gets to exit after SIGTERM before SIGKILL.
    pub stop_grace_ms: u64,
    /// Extra bytes required beyond the model size before admitting a spawn.
    pub admission_headroom_bytes: u64,
    /// How crashed workers are restarted and when the breaker opens.
    pub restart: RestartPolicy,
    /// Size rotation of the agent's own log (`--log-file`), `audit.jsonl` and worker logs.
    pub logs: LogRotation,
    /// The agent's own log file (`--log-file`); stderr when absent.
    pub log_file: Option<PathBuf>,
    /// How long a worker may stay starting or loading before it is killed and failed.
    pub load_timeout: LoadTimeout,
}

/// The time a worker gets to load its model (`[load_timeout]`): `base_secs` plus `per_gib_secs`
/// for each GiB of the model's files, so a big model is not cut off and a hung small one is not
/// waited on for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadTimeout {
    /// Seconds every load gets.
    pub base_secs: u64,
    /// Seconds more per GiB of model files.
    pub per_gib_secs: u64,
}

impl Default for LoadTimeout {
    /// 60 s plus 30 s per GiB.
    fn default() -> Self {
        LoadTimeout {
            base_secs: 60,
            per_gib_secs: 30,
        }
    }
}

impl LoadTimeout {
    /// The limit for a model of `bytes` bytes.
    pub fn for_model(&self, bytes: u64) -> std::time::Duration {
        let per_gib_ms = self.per_gib_secs.saturating_mul(1000);
        let extra = u128::from(bytes) * u128::from(per_gib_ms) / (1u128 << 30);
        // Saturate: a huge `per_gib_secs` means "wait", never a limit wrapped round to nothing.
        let extra_ms = u64::try_from(extra).unwrap_or(u64::MAX);
        std::time::Duration::from_millis(
            self.base_secs.saturating_mul(1000).saturating_add(extra_ms),
        )
    }
}

/// Most rotated files `[logs] keep` may ask for.
pub const MAX_LOG_KEEP: usize = 1000;

/// When a log file is rotated and how many rotated files stay (`[logs]` in the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogRotation {
    /// Size past which the file becomes `NAME.1` before the next line is written.
    pub max_bytes: u64,
    /// Rotated files kept beside the current one (`NAME.1` … `NAME.keep`).
    pub keep: usize,
}

impl Default for LogRotation {
    /// 8 MiB, three rotated files.
    fn default() -> Self {
        LogRotation {
            max_bytes: 8 << 20,
            keep: 3,
        }
    }
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
            logs: LogRotation::default(),
            log_file: None,
            load_timeout: LoadTimeout::default(),
        }
    }
}

impl AgentConfig {
    /// Parse `text` (read from `path`, named in errors) and validate it.
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.into(),
            message: one_line(&e, text),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(cfg)
    }

    /// Read, parse and validate the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// Checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "key `listen`: `{}` is not an address like 127.0.0.1:7733",
                self.listen
            ));
        }
        if self.heartbeat_ms < 50 {
            return Err("key `heartbeat_ms`: must be at least 50".into());
        }
        if self.telemetry_ms < 50 {
            return Err("key `telemetry_ms`: must be at least 50".into());
        }
        if self.load_timeout.base_secs == 0 {
            return Err("key `load_timeout.base_secs`: must be at least 1".into());
        }
        if self.logs.max_bytes < 4096 {
            return Err("key `logs.max_bytes`: must be at least 4096".into());
        }
        // Each rotation renames every kept file in turn: a huge `keep` stalls every writer.
        if self.logs.keep > MAX_LOG_KEEP {
            return Err(format!(
                "key `logs.keep`: {} rotated files is too many; at most {MAX_LOG_KEEP} \
                 (raise `logs.max_bytes` to keep more)",
                self.logs.keep
            ));
        }
        if self.worker_queue == 0 {
            return Err("key `worker_queue`: must be at least 1".into());
        }
        if self.restart.initial_backoff_ms == 0
            || self.restart.max_backoff_ms < self.restart.initial_backoff_ms
        {
            return Err(
                "key `restart.max_backoff_ms`: must be ≥ `restart.initial_backoff_ms` > 0".into(),
            );
        }
        Ok(())
    }
}

/// A node the dashboard connects to: either an agent URL plus token file (`url`, `token_file`),
/// or an SSH address (`ssh`) through which the dashboard installs, starts and reaches the agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name as the dashboard and every command show it (unique).
    pub name: String,
    /// `ws://HOST:PORT` of the agent (URL nodes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// File holding the agent's bearer token (URL nodes).
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub token_file: PathBuf,
    /// `USER@HOST[:PORT]` (SSH nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// Private key for SSH authentication; without it, the ssh-agent and `~/.ssh/id_*` are tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// Directory on the node for the installed binaries (`bin/`) and the agent's state
    /// (`agent/`); default `~/.local/share/rbee`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_dir: Option<String>,
    /// Model directories on the node handed to its agent (besides `<remote_dir>/models`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_dirs: Vec<String>,
    /// Stop the node's agent when the dashboard quits.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ephemeral: bool,
    /// Keep the node's installed agent and worker even when they are another build than this
    /// machine's (same protocol); without it the bring-up replaces them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_upgrade: bool,
}

fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl NodeConfig {
    /// Either `ssh`, or `url` and `token_file`; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let has_url = !self.url.is_empty() || !path_is_empty(&self.token_file);
        match &self.ssh {
            Some(addr) => {
                if has_url {
                    return Err(
                        "key `url`/`token_file`: not used with `ssh` (the token is read over SSH)"
                            .into(),
                    );
                }
                SshAddr::parse(addr)
                    .map(|_| ())
                    .map_err(|m| format!("key `ssh`: {m}"))
            }
            None => {
                if self.identity.is_some()
                    || self.remote_dir.is_some()
                    || !self.model_dirs.is_empty()
                    || self.ephemeral
                {
                    return Err("key `ssh`: missing; `identity`, `remote_dir`, `model_dirs` and `ephemeral` need it".into());
                }
                if self.url.is_empty() {
                    return Err("key `url`: missing (or give `ssh`)".into());
                }
                if path_is_empty(&self.token_file) {
                    return Err("key `token_file`: missing".into());
                }
                Ok(())
            }
        }
    }
}

/// `USER@HOST[:PORT]`, with `[v6]:PORT` for IPv6 literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAddr {
    /// Login user on the node.
    pub user: String,
    /// Host name or address of the node.
    pub host: String,
    /// SSH port (22 unless `:PORT` was given).
    pub port: u16,
}

impl SshAddr {
    /// Parse `user@host[:port]`; the error says which part is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (user, rest) = s
            .split_once('@')
            .ok_or_else(|| format!("`{s}` is not USER@HOST[:PORT]"))?;
        if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c == ':') {
            return Err(format!("`{s}`: bad user name"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("`{s}`: junk after `]`")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(format!("`{s}`: write IPv6 hosts as [ADDR]:PORT")),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            return Err(format!("`{s}`: missing host"));
        }
        let port = match port {
            None => 22,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
        };
        Ok(Self {
            user: user.into(),
            host: host.into(),
            port,
        })
    }
}

impl std::fmt::Display for SshAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// `rbee-tui` settings: the nodes it follows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuiConfig {
    /// Every node besides the implicit local one, in the order they were added.
    pub nodes: Vec<NodeConfig>,
}

impl TuiConfig {
    /// Parse `text` (read from `path`, named in errors) and validate every node.
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.into(),
            message: one_line(&e, text),
        })?;
        let mut seen = std::collections::HashSet::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            if let Err(m) = n.validate() {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    message: format!("node `{}` (nodes[{i}]): {m}", n.name),
                });
            }
            if !seen.insert(&n.name) {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    message: format!("key `nodes[{i}].name`: duplicate node name `{}`", n.name),
                });
            }
        }
        Ok(cfg)
    }

    /// The file's text, as `nodes add` writes it back.
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
    fn load_timeout_scales_with_the_model() {
        let t = LoadTimeout::default();
        assert_eq!(t.for_model(0).as_secs(), 60);
        assert_eq!(t.for_model(4 << 30).as_secs(), 180);
        assert_eq!(t.for_model(98_000_000).as_millis(), 62_738);
        // 2^63 ms per GiB of a 2 GiB model is 2^64 ms: saturated, not wrapped round to 1 s.
        let huge = LoadTimeout {
            base_secs: 1,
            per_gib_secs: (1 << 63) / 1000 + 1,
        };
        assert_eq!(huge.for_model(2 << 30).as_millis(), u128::from(u64::MAX));
    }

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
        let e = AgentConfig::from_toml("a.toml".as_ref(), "[restart]\nmax_restarts = \"many\"")
            .unwrap_err();
        assert!(e.to_string().contains("max_restarts"), "{e}");
    }

    #[test]
    fn bad_listen_is_named() {
        let e = AgentConfig::from_toml("a.toml".as_ref(), "listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
    }

    #[test]
    fn ssh_nodes_parse_and_old_url_nodes_stay_valid() {
        let t = "[[nodes]]\nname='a'\nurl='ws://x'\ntoken_file='t'\n[[nodes]]\nname='b'\nssh='me@gpu-b:2222'\nidentity='/k'\nephemeral=true\n";
        let c = TuiConfig::from_toml("t.toml".as_ref(), t).unwrap();
        assert_eq!(c.nodes[0].url, "ws://x");
        assert_eq!(c.nodes[1].ssh.as_deref(), Some("me@gpu-b:2222"));
        assert!(c.nodes[1].ephemeral);
        let back = TuiConfig::from_toml("t.toml".as_ref(), &c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert!(!c.to_toml().contains("url = \"\""), "{}", c.to_toml());
    }

    #[test]
    fn ssh_node_errors_name_the_key() {
        for (t, key) in [
            ("[[nodes]]\nname='b'\nssh='gpu-b'\n", "`ssh`"),
            ("[[nodes]]\nname='b'\nssh='me@gpu-b:x'\n", "`ssh`"),
            ("[[nodes]]\nname='b'\nssh='me@h'\nurl='ws://x'\n", "`url`"),
            ("[[nodes]]\nname='b'\nurl='ws://x'\n", "`token_file`"),
            (
                "[[nodes]]\nname='b'\nurl='ws://x'\ntoken_file='t'\nephemeral=true\n",
                "`ssh`",
            ),
            ("[[nodes]]\nname='b'\nssh='me@h'\nport=3\n", "port"),
        ] {
            let e = TuiConfig::from_toml("t.toml".as_ref(), t)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{t}: {e}");
        }
    }

    #[test]
    fn ssh_addr_forms() {
        let a = SshAddr::parse("root@10.0.0.2").unwrap();
        assert_eq!(
            (a.user.as_str(), a.host.as_str(), a.port),
            ("root", "10.0.0.2", 22)
        );
        let a = SshAddr::parse("u@[::1]:2200").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 2200));
        assert_eq!(a.to_string(), "u@[::1]:2200");
        assert!(SshAddr::parse("@h").is_err());
        assert!(SshAddr::parse("u@h:0").is_err());
        assert!(SshAddr::parse("u@::1").is_err());
    }

    #[test]
    fn duplicate_node_is_named() {
        let t = "[[nodes]]\nname='a'\nurl='ws://x'\ntoken_file='t'\n[[nodes]]\nname='a'\nurl='ws://y'\ntoken_file='t'\n";
        let e = TuiConfig::from_toml("t.toml".as_ref(), t).unwrap_err();
        assert!(e.to_string().contains("nodes[1].name"), "{e}");
    }
}
