//! The command line's definition, all of it: global flags, the subcommands and their arguments.
//! `nodes add`'s arguments live with the rest of adding a node, in [`crate::nodes::add`], where the
//! dashboard's `:add` reads them too.
use std::path::PathBuf;

use clap::{ArgGroup, Parser, Subcommand};

pub use crate::nodes::add::AddArgs;

/// The longest `--timeout`: a year. Deadlines are instants, and one past the clock's range
/// would panic.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// `rbee-tui --version`: `X.Y.Z (protocol N) build B`, B a hash of this binary (computed only
/// when the version is asked for), as `rbee-agent --version` says its own.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let base = format!(
            "{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            rbee_proto::PROTOCOL_VERSION
        );
        let asked = std::env::args()
            .skip(1)
            .any(|a| a == "--version" || a == "-V");
        if asked {
            format!("{base} build {}", rbee_host::build::this_binary())
        } else {
            base
        }
    })
}

/// `rbee-tui [global flags] [command]`.
#[derive(Debug, Parser)]
#[command(
    name = "rbee-tui",
    version = version_line(),
    about = "Control center for an rbee GPU cluster: run without a command for the dashboard"
)]
pub struct Cli {
    /// Config file with the node list [default: <config dir>/rbee/tui.toml].
    #[arg(long, env = "RBEE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a connection, a reply, a generation or `--wait` (1 to a year).
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub timeout: u64,
    /// Where the dashboard logs [default: <state dir>/rbee/tui.log].
    #[arg(long, env = "RBEE_LOG_FILE", global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Dashboard only: also run the OpenAI-compatible gateway on ADDR (as `serve --listen`), its
    /// traffic on the Requests screen (`R`); it stops when the dashboard quits.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<std::net::SocketAddr>,
    /// With --serve: the API key file (as `serve --api-key-file`).
    #[arg(long, value_name = "FILE", requires = "serve")]
    pub api_key_file: Option<PathBuf>,
    /// What to do; the dashboard when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or edit the nodes in the config file.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Models the nodes can serve.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// List, spawn, kill and restart workers.
    #[command(subcommand)]
    Workers(WorkersCmd),
    /// Generate text; streams it to stdout as it arrives.
    Infer(InferArgs),
    /// Talk with a model: one turn with --prompt, else a conversation read from stdin.
    Chat(ChatArgs),
    /// Every node's connection state, telemetry and workers.
    Status,
    /// The OpenAI-compatible gateway for every node's models (headless queen).
    Serve(Box<crate::cli::serve::ServeArgs>),
}

/// `nodes …`.
#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Add a node: an agent URL and the file holding its token, or an SSH address. An SSH node
    /// is brought up at once (host key checked, agent installed and started when needed, a
    /// session opened through the tunnel) and recorded only when that worked.
    Add(AddArgs),
    /// The configured nodes.
    List,
    /// Remove a node from the config (its agent keeps running).
    Rm {
        /// The node's name.
        name: String,
    },
    /// Stop an SSH node's agent and its workers, and check they are gone.
    Stop {
        /// The node's name.
        name: String,
    },
    /// The node agent's own log (an agent started by rbee-tui writes one).
    Logs {
        /// The node's name.
        name: String,
        /// How many of the last lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
        /// Keep printing lines as they are written (Ctrl-C ends).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// `models …`.
#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// The models each node can serve.
    List {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Download an `hf:ORG/REPO[@REVISION][:FILE]` model into a node's Hugging Face cache;
    /// progress on stderr, the cached path on stdout. Use a generous `--timeout`.
    Pull {
        /// The node to pull on (may be left out when there is only one).
        #[arg(long)]
        node: Option<String>,
        /// `hf:ORG/REPO[@REVISION][:FILE]`
        model: String,
    },
}

/// `workers …`.
#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    /// Every worker of every node (or of one).
    List {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Start a worker; prints its id.
    Spawn {
        /// Node to spawn on (may be left out when there is only one).
        #[arg(long)]
        node: Option<String>,
        /// Model name or reference, as `models list` shows.
        #[arg(long)]
        model: String,
        /// `auto` (the GPU with the most free memory that fits the model; the CPU on a node
        /// without GPUs or without a CUDA worker), `cpu` or `cuda:N`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// CPU threads for the worker [default: the agent's choice].
        #[arg(long)]
        threads: Option<usize>,
        /// Conversations the worker decodes at once, batched [default: 4 on CPU for llama and
        /// qwen models, 1 for families without batching].
        #[arg(long, value_name = "N")]
        parallel: Option<u32>,
        /// Context length per conversation, in tokens [default: the model's own].
        #[arg(long, value_name = "TOKENS")]
        ctx: Option<u32>,
        /// Return only once the worker is ready (exit 0) or has failed (exit 1), within --timeout.
        #[arg(long)]
        wait: bool,
    },
    /// Stop a worker for good.
    Kill {
        /// The worker's id.
        id: String,
        /// Its node (looked up on every node when left out).
        #[arg(long)]
        node: Option<String>,
    },
    /// Restart a worker (same id, same model).
    Restart {
        /// The worker's id.
        id: String,
        /// Its node (looked up on every node when left out).
        #[arg(long)]
        node: Option<String>,
    },
    /// A worker's log (its stderr, kept by the agent): plain text, colours removed.
    Logs {
        /// The worker's id.
        id: String,
        /// Its node (looked up on every node when left out).
        #[arg(long)]
        node: Option<String>,
        /// How many of the last lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
        /// Keep printing lines as they are written (Ctrl-C ends).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Stop every worker of every node (or of one) for good; asks first on a terminal.
    UnloadAll {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `infer`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["worker", "model"])))]
pub struct InferArgs {
    /// The node (may be left out when there is only one).
    #[arg(long)]
    pub node: Option<String>,
    /// A specific worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Any ready worker of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// How to sample.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-sequence (fixed-length runs, e.g. benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

/// `chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The node (may be left out when there is only one).
    #[arg(long)]
    pub node: Option<String>,
    /// Any ready worker of this model (a NAME, file name or reference as `models list` shows).
    #[arg(long)]
    pub model: String,
    /// Instructions that frame the conversation (the system turn).
    #[arg(long)]
    pub system: Option<String>,
    /// One question: answer it and exit. Without it the conversation is read from stdin.
    #[arg(long)]
    pub prompt: Option<String>,
    /// How to sample each answer.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The sampling flags `infer` and `chat` share; the protocol's defaults for what is left out.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// Most tokens per answer [default: the protocol's].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling seed, for repeatable output.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The request's sampling parameters.
    pub fn params(&self) -> rbee_proto::SamplingParams {
        let d = rbee_proto::SamplingParams::default();
        rbee_proto::SamplingParams {
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(d.temperature),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::add::parse_dashboard_add;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn infer_needs_worker_or_model() {
        assert!(Cli::try_parse_from(["rbee-tui", "infer", "--prompt", "hi"]).is_err());
        assert!(Cli::try_parse_from([
            "rbee-tui", "infer", "--prompt", "hi", "--worker", "w1", "--model", "m"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["rbee-tui", "infer", "--prompt", "hi", "--model", "m"]).is_ok()
        );
    }

    #[test]
    fn absurd_timeouts_are_refused_not_a_panic() {
        let e = Cli::try_parse_from(["rbee-tui", "--timeout", "18446744073709551615", "status"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--timeout") && e.contains("1..=31536000"), "{e}");
        let c = Cli::try_parse_from(["rbee-tui", "--timeout", "31536000", "status"]).unwrap();
        assert_eq!(c.timeout, MAX_TIMEOUT_SECS);
        // 0 used to mean a 1 ms budget: every generation cut at once.
        let e = Cli::try_parse_from(["rbee-tui", "--timeout", "0", "status"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--timeout") && e.contains("1..="), "{e}");
    }

    #[test]
    fn json_flag_is_global() {
        let c = Cli::try_parse_from(["rbee-tui", "workers", "list", "--json"]).unwrap();
        assert!(c.json);
    }

    #[test]
    fn dashboard_add_parses_flags_and_refuses_junk() {
        let r = parse_dashboard_add(&[
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
        assert_eq!(r.node.name, "gpu");
        assert_eq!(r.node.ssh.as_deref(), Some("me@h:2222"));
        assert_eq!(r.node.identity.as_deref(), Some(Path::new("/k")));
        assert!(r.node.ephemeral);
        assert_eq!(r.node.model_dirs, vec!["/m".to_string()]);
        let refused = |words: &[&str]| parse_dashboard_add(words).unwrap_err();
        assert!(refused(&["gpu"]).contains("usage"));
        assert!(refused(&["gpu", "nohost"]).contains("`ssh`"));
        let e = refused(&["gpu", "me@h", "--identity"]);
        assert!(
            e.contains("--identity") && e.contains("value") && !e.contains('\n'),
            "{e}"
        );
        let e = refused(&["gpu", "me@h", "--bogus"]);
        assert!(
            e.contains("--bogus") && e.contains("usage") && !e.contains('\n'),
            "{e}"
        );
        let e = refused(&["gpu", "me@h", "--url", "ws://x:1", "--token-file", "/t"]);
        assert!(e.contains("--url"), "{e}");
    }

    #[test]
    fn dashboard_add_is_nodes_add_over_ssh() {
        let Cli {
            command: Some(Command::Nodes(NodesCmd::Add(args))),
            ..
        } = Cli::try_parse_from([
            "rbee-tui",
            "nodes",
            "add",
            "gpu",
            "--ssh",
            "me@h",
            "--remote-dir",
            "/r",
        ])
        .unwrap()
        else {
            panic!("nodes add")
        };
        let typed = parse_dashboard_add(&["gpu", "me@h", "--remote-dir", "/r"]).unwrap();
        assert_eq!(args.ssh_request(), Some(typed));
    }
}
