//! Client (dashboard, scripts) ⇄ agent link: JSON text frames over an authenticated WebSocket.
//!
//! The client speaks first with `Hello`; the agent answers `Welcome` or an `Error` with
//! `version_mismatch` and closes. After that every `Request` carries an id chosen by the client and
//! every `Reply`, `Token` and request-related `Error` carries it back.
use serde::{Deserialize, Serialize};

use crate::{
    ChatMessage, ErrorCode, FinishReason, ModelSummary, RequestId, SamplingParams, UnixMillis,
    Usage, WorkerId, WorkerState,
};

/// Frames a client (dashboard, script, gateway) sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Must be the first frame; the agent answers `Welcome` or `version_mismatch`.
    Hello {
        /// The client's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
        /// Who is asking (`rbee-tui 0.1.0`), for the audit log.
        client: String,
        /// Who runs the client and from where, recorded with every audit entry of the session
        /// (older clients send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<ClientIdentity>,
    },
    /// One request; every answer carries its id back.
    Request {
        /// Chosen by the client, unique within the session.
        id: RequestId,
        /// Legacy absolute deadline, by the client's clock (older clients send it). The agent
        /// still honours it, so it breaks on nodes whose clock differs; `timeout_ms` wins.
        #[serde(default)]
        deadline: Option<UnixMillis>,
        /// Time budget in milliseconds, counted by the agent from the request's arrival, so a
        /// node whose clock runs ahead of or behind the client's keeps the budget intact.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// What is asked.
        #[serde(flatten)]
        body: Request,
    },
}

/// Who runs a client: the tool, the operating-system user and host it runs as, and over SSH the
/// user and key it logged in with. Said by the client, so it names rather than proves: the token
/// (and the SSH key) are what authenticate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientIdentity {
    /// `rbee-tui/0.1.0`, `rbee-bench`, …
    pub tool: String,
    /// The client's operating-system user.
    pub os_user: String,
    /// The host the client runs on.
    pub host: String,
    /// The SSH user the session's tunnel logged in as, when it came through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// The `SHA256:` fingerprint of the SSH key that tunnel logged in with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

impl ClientIdentity {
    /// One line for logs: `alice@laptop (rbee-tui/0.1.0, ssh bob key SHA256:…)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{}@{} ({}", self.os_user, self.host, self.tool);
        if let Some(u) = &self.ssh_user {
            s.push_str(&format!(", ssh {u}"));
        }
        if let Some(k) = &self.ssh_key {
            s.push_str(&format!(" key {k}"));
        }
        s.push(')');
        s
    }
}

/// Everything a client can ask an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Models this node can serve now.
    ListModels,
    /// Start a worker; answered `Spawned` once it is launched (readiness comes as an event).
    Spawn(SpawnSpec),
    /// Stop a worker and forget it (also from the desired state).
    Kill {
        /// The worker to stop.
        worker: WorkerId,
    },
    /// Stop a worker and start it again with the same spec.
    Restart {
        /// The worker to restart.
        worker: WorkerId,
    },
    /// Every worker of this node.
    ListWorkers,
    /// Generate text; answered by `Token`s then `InferDone`.
    Infer {
        /// A specific worker; if absent, any ready worker of `model`.
        #[serde(default)]
        worker: Option<WorkerId>,
        /// Model to route to when `worker` is absent.
        #[serde(default)]
        model: Option<String>,
        /// The text to continue.
        prompt: String,
        /// Sampling and limits.
        #[serde(default)]
        params: SamplingParams,
    },
    /// A conversation: the worker renders the model's chat template over `messages` and answers
    /// as the assistant; streamed like `Infer` (`Token`s then `InferDone`).
    Chat {
        /// A specific worker; if absent, any ready worker of `model`.
        #[serde(default)]
        worker: Option<WorkerId>,
        /// Model to route to when `worker` is absent.
        #[serde(default)]
        model: Option<String>,
        /// The conversation so far, oldest first.
        messages: Vec<ChatMessage>,
        /// Sampling and limits.
        #[serde(default)]
        params: SamplingParams,
    },
    /// Cancel an earlier request of this session.
    Cancel {
        /// The id of the request to cancel.
        request: RequestId,
    },
    /// Last `lines` lines of a worker's stderr.
    TailLog {
        /// Whose log.
        worker: WorkerId,
        /// How many of the last lines.
        lines: usize,
    },
    /// Lines of a log the agent keeps: a worker's stderr, or with no `worker` the agent's own
    /// log (when it writes one, `--log-file`). Answered `LogLines`; `after` (the `next` of an
    /// earlier answer) asks only for what came since, which is how `--follow` polls.
    ReadLog {
        /// Whose log; the agent's own when absent.
        #[serde(default)]
        worker: Option<WorkerId>,
        /// At most this many of the last lines.
        lines: usize,
        /// Only lines after this cursor (from an earlier `LogLines`).
        #[serde(default)]
        after: Option<u64>,
    },
    /// Start receiving `Event`s (worker states, heartbeats, telemetry, audit).
    Subscribe,
    /// Node summary: telemetry and workers.
    Status,
    /// Round-trip check.
    Ping,
    /// Download an `hf:ORG/REPO[@REVISION][:FILE]` model into the node's Hugging Face cache, with
    /// `PullProgress` events while it runs. Refused up front when it does not fit on disk.
    Pull {
        /// The `hf:` reference to fetch.
        model: String,
    },
    /// The agent's Prometheus exposition (what its `GET /metrics` serves), so a gateway can relay
    /// every node's metrics over the sessions it already holds, with no extra port per node.
    Metrics,
}

/// What to run: a model reference as `rbee-worker --model` accepts, on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// What `rbee-worker --model` accepts: a model name, a file in a model dir, or `hf:`.
    pub model: String,
    /// `cpu`, `cuda:N` or `metal:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU threads for the worker; all it may use when absent.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Sequences the worker serves at once (`rbee-worker --parallel`); the worker's default
    /// when absent.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Context length per sequence (`rbee-worker --ctx`), bounded by the model's own; the
    /// model's when absent.
    #[serde(default)]
    pub ctx: Option<u32>,
}

fn default_device() -> String {
    "cpu".into()
}

impl Default for SpawnSpec {
    /// No model yet, on the CPU, every other choice the worker's own.
    fn default() -> Self {
        SpawnSpec {
            model: String::new(),
            device: default_device(),
            threads: None,
            parallel: None,
            ctx: None,
        }
    }
}

/// Deserialized by hand (`server_msg_de` below) for speed: a dashboard decodes tens of thousands
/// of these a second. The wire format is the derived `Serialize`'s, unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The agent's answer to `Hello`: versions agree.
    Welcome {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
        /// The agent's release (`0.1.0`).
        agent_version: String,
        /// The node's name as the agent knows it (its host name).
        node: String,
    },
    /// The answer to one request.
    Reply {
        /// The request answered.
        id: RequestId,
        /// The answer.
        #[serde(flatten)]
        body: Reply,
    },
    /// Streamed text of an `Infer`.
    Token {
        /// The `Infer` request this text belongs to.
        id: RequestId,
        /// Valid UTF-8, in order; concatenated they give the full answer.
        text: String,
    },
    /// A request failed (or, with `id: None`, a frame that had no usable id).
    Error {
        /// The request that failed, when there was one.
        id: Option<RequestId>,
        /// The kind of failure, for programs.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
    /// Something that happened on the node (after `Subscribe`).
    Event {
        /// What happened.
        #[serde(flatten)]
        event: Event,
    },
}

mod server_msg_de {
    //! Serde's derive for an internally tagged enum, with a flattened inner enum tagged again,
    //! buffers every frame three times before it builds the value. Our encoder writes the `type`
    //! tag first, so the fast path reads it and hands the rest of the map straight to the
    //! variant; anything else (tag later, from a `Value`) is buffered once and takes the same
    //! per-variant code.
    use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
    use serde::Deserialize;

    use super::{Event, Reply, ServerMsg};
    use crate::{ErrorCode, RequestId};

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Welcome,
        Reply,
        Token,
        Error,
        Event,
    }

    #[derive(Deserialize)]
    struct WelcomeFields {
        protocol_version: u32,
        agent_version: String,
        node: String,
    }

    #[derive(Deserialize)]
    struct ReplyFields {
        id: RequestId,
        #[serde(flatten)]
        body: Reply,
    }

    #[derive(Deserialize)]
    struct TokenFields {
        id: RequestId,
        text: String,
    }

    #[derive(Deserialize)]
    struct ErrorFields {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    }

    /// The fields of variant `kind`, from whatever holds the rest of the frame.
    fn variant<'de, D: Deserializer<'de>>(kind: Kind, d: D) -> Result<ServerMsg, D::Error> {
        Ok(match kind {
            Kind::Event => ServerMsg::Event {
                event: Event::deserialize(d)?,
            },
            Kind::Token => {
                let f = TokenFields::deserialize(d)?;
                ServerMsg::Token {
                    id: f.id,
                    text: f.text,
                }
            }
            Kind::Reply => {
                let f = ReplyFields::deserialize(d)?;
                ServerMsg::Reply {
                    id: f.id,
                    body: f.body,
                }
            }
            Kind::Error => {
                let f = ErrorFields::deserialize(d)?;
                ServerMsg::Error {
                    id: f.id,
                    code: f.code,
                    message: f.message,
                }
            }
            Kind::Welcome => {
                let f = WelcomeFields::deserialize(d)?;
                ServerMsg::Welcome {
                    protocol_version: f.protocol_version,
                    agent_version: f.agent_version,
                    node: f.node,
                }
            }
        })
    }

    struct MsgVisitor;

    impl<'de> Visitor<'de> for MsgVisitor {
        type Value = ServerMsg;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a server message: an object with a `type`")
        }

        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<ServerMsg, M::Error> {
            let Some(first) = map.next_key::<String>()? else {
                return Err(de::Error::missing_field("type"));
            };
            if first == "type" {
                let kind = map.next_value::<Kind>()?;
                return variant(kind, MapAccessDeserializer::new(map));
            }
            // The tag comes later: buffer the frame once, then the same per-variant code.
            let mut rest = serde_json::Map::new();
            rest.insert(first, map.next_value()?);
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                rest.insert(k, v);
            }
            let tag = rest
                .remove("type")
                .ok_or_else(|| de::Error::missing_field("type"))?;
            let kind = Kind::deserialize(tag).map_err(de::Error::custom)?;
            variant(kind, serde_json::Value::Object(rest)).map_err(de::Error::custom)
        }
    }

    impl<'de> Deserialize<'de> for ServerMsg {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(MsgVisitor)
        }
    }
}

/// Answers to requests, one variant per kind of request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `ListModels`.
    Models {
        /// Every model the node can serve.
        models: Vec<ModelEntry>,
    },
    /// Answer to `Spawn`: the worker is launched.
    Spawned {
        /// The new worker.
        worker: WorkerInfo,
    },
    /// Answer to `Kill`: the worker is gone.
    Killed {
        /// The worker stopped.
        worker: WorkerId,
    },
    /// Answer to `Restart`.
    Restarted {
        /// The worker restarted.
        worker: WorkerId,
    },
    /// Answer to `ListWorkers`.
    Workers {
        /// Every worker of the node.
        workers: Vec<WorkerInfo>,
    },
    /// End of an `Infer` stream.
    InferDone {
        /// The worker that generated.
        worker: WorkerId,
        /// Why generation ended.
        finish_reason: FinishReason,
        /// Token counts and speeds.
        usage: Usage,
    },
    /// Answer to `Cancel`.
    Cancelled {
        /// The request that was cancelled.
        request: RequestId,
    },
    /// Answer to `TailLog`.
    Log {
        /// Whose log.
        worker: WorkerId,
        /// The lines, oldest first.
        lines: Vec<String>,
    },
    /// Answer to `ReadLog`.
    LogLines {
        /// The lines, oldest first, as written (control characters included: a reader that
        /// shows them on a terminal must defuse them). Very long lines are cut, saying so.
        lines: Vec<String>,
        /// Cursor to pass as `after` to get only what comes next.
        next: u64,
        /// Lines between `after` and the first line returned that are no longer kept (or were
        /// left out to keep the answer within a frame).
        skipped: u64,
    },
    /// Answer to `Subscribe`: events follow.
    Subscribed,
    /// Answer to `Status`.
    Status {
        /// The node's telemetry and workers.
        status: NodeStatus,
    },
    /// Answer to `Ping`.
    Pong {
        /// The agent's clock when it answered.
        agent_time: UnixMillis,
    },
    /// End of a `Pull`: the files are in the cache; `downloaded_bytes` is 0 when all were there.
    Pulled {
        /// The reference pulled.
        model: String,
        /// Where the model now is on the node.
        path: String,
        /// Bytes fetched by this pull.
        downloaded_bytes: u64,
    },
    /// Answer to `Metrics`: the exposition, as `GET /metrics` serves it.
    Metrics {
        /// Prometheus' text format (0.0.4).
        text: String,
    },
}

/// A model file or directory the node can serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The short name lists show.
    pub name: String,
    /// What `rbee-worker --model` (and `Spawn.model`) accepts.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Bytes on disk (all files of a directory model).
    pub size_bytes: u64,
    /// `gguf` or `safetensors`.
    pub format: String,
}

/// A worker as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Unique on the node for the agent's lifetime.
    pub id: WorkerId,
    /// The model reference it was spawned with.
    pub model: String,
    /// The device it runs on.
    pub device: String,
    /// Where it is in its lifecycle.
    pub state: WorkerState,
    /// Process id while a process exists.
    pub pid: Option<u32>,
    /// Restarts after crashes so far.
    pub restarts: u32,
    /// Why the last process ended (`exit code 1`, `killed by signal 9`, …).
    pub last_exit: Option<String>,
    /// Set once the worker reported `Ready`.
    pub summary: Option<ModelSummary>,
    /// Milliseconds since the last heartbeat (None before the first).
    pub heartbeat_age_ms: Option<u64>,
    /// Decode speed of its last generation.
    pub tokens_per_s: f64,
    /// Resident memory of the process.
    pub rss_bytes: u64,
    /// GPU memory of the process (0 on CPU).
    pub vram_bytes: u64,
    /// Requests it is working on.
    pub in_flight: u32,
    /// Loading stage and progress, or why it failed; empty when there is nothing to say.
    #[serde(default)]
    pub detail: String,
}

/// Things that happen on a node, pushed to subscribed sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A worker changed state (or any of its fields).
    WorkerState {
        /// The worker as it is now.
        worker: WorkerInfo,
    },
    /// A worker finished loading.
    WorkerReady {
        /// The worker.
        worker: WorkerId,
        /// What it loaded.
        model: ModelSummary,
        /// From process start to `Ready`.
        spawn_to_ready_ms: u64,
    },
    /// A worker's periodic proof of life.
    Heartbeat {
        /// The worker.
        worker: WorkerId,
        /// Decode speed of its last generation.
        tokens_per_s: f64,
        /// Resident memory of the process.
        rss_bytes: u64,
        /// Requests it is working on.
        in_flight: u32,
    },
    /// A telemetry sample of the node.
    Telemetry {
        /// The sample.
        telemetry: Telemetry,
    },
    /// A line was appended to the audit log.
    Audit {
        /// The line.
        entry: AuditEntry,
    },
    /// A worker wrote a line to its log.
    Log {
        /// The worker.
        worker: WorkerId,
        /// The line, without its newline.
        line: String,
    },
    /// A model pull moving on: bytes of all its missing files so far, out of their total.
    PullProgress {
        /// The reference being pulled.
        model: String,
        /// The file downloading now.
        file: String,
        /// Bytes fetched so far.
        downloaded_bytes: u64,
        /// Bytes to fetch in all.
        total_bytes: u64,
    },
}

/// One node's resources at one moment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Telemetry {
    /// When the sample was taken, by the agent's clock.
    pub at: UnixMillis,
    /// CPU use of the whole node, 0–100 × cores.
    pub cpu_percent: f32,
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// Memory in use.
    pub mem_used_bytes: u64,
    /// Free space where the node keeps its models.
    pub disk_free_bytes: u64,
    /// Empty with `gpu_status` explaining why when there is no usable GPU.
    pub gpus: Vec<GpuTelemetry>,
    /// Why `gpus` is empty (no driver, no NVML), or empty when GPUs were read.
    pub gpu_status: String,
    /// Backends this node's worker binaries run: `cpu`, and `cuda` when a CUDA worker
    /// (`rbee-worker-cuda`) is installed and starts. Empty from agents older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
}

/// One GPU's state at one moment (NVML).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuTelemetry {
    /// NVML index, as `cuda:N` names it.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Memory on the card.
    pub mem_total_bytes: u64,
    /// Memory in use.
    pub mem_used_bytes: u64,
    /// Busy share of the last sample period.
    pub utilization_percent: u32,
    /// Core temperature.
    pub temperature_c: u32,
    /// Power draw.
    pub power_watts: f32,
    /// GPU memory per process, with the worker id when the process is one of ours.
    pub processes: Vec<GpuProcess>,
}

/// One process holding GPU memory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Its process id.
    pub pid: u32,
    /// GPU memory it holds.
    pub used_bytes: u64,
    /// The worker it is, when it is one of this agent's.
    pub worker: Option<WorkerId>,
}

/// A node's summary: who it is, its resources and its workers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name as the agent knows it.
    pub node: String,
    /// The agent's release.
    pub agent_version: String,
    /// Latest telemetry sample.
    pub telemetry: Telemetry,
    /// Every worker.
    pub workers: Vec<WorkerInfo>,
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened, by the agent's clock.
    pub at: UnixMillis,
    /// `auth_ok`, `auth_failed`, `spawn`, `kill`, `restart`, `breaker_open`, `config`, …
    pub action: String,
    /// Who acted: the session's peer address, when there is one.
    pub peer: Option<String>,
    /// Who the session says it is (user, host, tool, SSH user and key) and the token it used
    /// (`node token` or `operator NAME`); absent for the agent's own entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// The worker concerned, if any.
    pub worker: Option<WorkerId>,
    /// Free text: the model, the reason, the numbers.
    pub detail: String,
}
