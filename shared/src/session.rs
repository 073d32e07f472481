//! Client (dashboard, scripts) ⇄ agent link: JSON text frames over an authenticated WebSocket.
//!
//! The client speaks first with `Hello`; the agent answers `Welcome` or an `Error` with
//! `version_mismatch` and closes. After that every `Request` carries an id chosen by the client and
//! every `Reply`, `Token` and request-related `Error` carries it back.
use serde::{Deserialize, Serialize};

use crate::{
    ErrorCode, FinishReason, ModelSummary, RequestId, SamplingParams, UnixMillis, Usage, WorkerId,
    WorkerState,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Hello {
        protocol_version: u32,
        client: String,
    },
    Request {
        id: RequestId,
        #[serde(default)]
        deadline: Option<UnixMillis>,
        #[serde(flatten)]
        body: Request,
    },
}

/// Everything a client can ask an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Models this node can serve now.
    ListModels,
    Spawn(SpawnSpec),
    Kill {
        worker: WorkerId,
    },
    Restart {
        worker: WorkerId,
    },
    ListWorkers,
    Infer {
        /// A specific worker; if absent, any ready worker of `model`.
        #[serde(default)]
        worker: Option<WorkerId>,
        #[serde(default)]
        model: Option<String>,
        prompt: String,
        #[serde(default)]
        params: SamplingParams,
    },
    /// Cancel an earlier request of this session.
    Cancel {
        request: RequestId,
    },
    /// Last `lines` lines of a worker's stderr.
    TailLog {
        worker: WorkerId,
        lines: usize,
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
        model: String,
    },
}

/// What to run: a model reference as `rbee-worker --model` accepts, on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnSpec {
    pub model: String,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub threads: Option<usize>,
}

fn default_device() -> String {
    "cpu".into()
}

/// Deserialized by hand (`server_msg_de` below) for speed: a dashboard decodes tens of thousands
/// of these a second. The wire format is the derived `Serialize`'s, unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        protocol_version: u32,
        agent_version: String,
        node: String,
    },
    Reply {
        id: RequestId,
        #[serde(flatten)]
        body: Reply,
    },
    /// Streamed text of an `Infer`.
    Token { id: RequestId, text: String },
    Error {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
    Event {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Models {
        models: Vec<ModelEntry>,
    },
    Spawned {
        worker: WorkerInfo,
    },
    Killed {
        worker: WorkerId,
    },
    Restarted {
        worker: WorkerId,
    },
    Workers {
        workers: Vec<WorkerInfo>,
    },
    /// End of an `Infer` stream.
    InferDone {
        worker: WorkerId,
        finish_reason: FinishReason,
        usage: Usage,
    },
    Cancelled {
        request: RequestId,
    },
    Log {
        worker: WorkerId,
        lines: Vec<String>,
    },
    Subscribed,
    Status {
        status: NodeStatus,
    },
    Pong {
        agent_time: UnixMillis,
    },
    /// End of a `Pull`: the files are in the cache; `downloaded_bytes` is 0 when all were there.
    Pulled {
        model: String,
        path: String,
        downloaded_bytes: u64,
    },
}

/// A model file or directory the node can serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// What `rbee-worker --model` (and `Spawn.model`) accepts.
    #[serde(rename = "ref")]
    pub reference: String,
    pub size_bytes: u64,
    /// `gguf` or `safetensors`.
    pub format: String,
}

/// A worker as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub model: String,
    pub device: String,
    pub state: WorkerState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Set once the worker reported `Ready`.
    pub summary: Option<ModelSummary>,
    /// Milliseconds since the last heartbeat (None before the first).
    pub heartbeat_age_ms: Option<u64>,
    pub tokens_per_s: f64,
    pub rss_bytes: u64,
    pub vram_bytes: u64,
    pub in_flight: u32,
    /// Loading stage and progress, or why it failed; empty when there is nothing to say.
    #[serde(default)]
    pub detail: String,
}

/// Things that happen on a node, pushed to subscribed sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    WorkerState {
        worker: WorkerInfo,
    },
    WorkerReady {
        worker: WorkerId,
        model: ModelSummary,
        spawn_to_ready_ms: u64,
    },
    Heartbeat {
        worker: WorkerId,
        tokens_per_s: f64,
        rss_bytes: u64,
        in_flight: u32,
    },
    Telemetry {
        telemetry: Telemetry,
    },
    Audit {
        entry: AuditEntry,
    },
    Log {
        worker: WorkerId,
        line: String,
    },
    /// A model pull moving on: bytes of all its missing files so far, out of their total.
    PullProgress {
        model: String,
        file: String,
        downloaded_bytes: u64,
        total_bytes: u64,
    },
}

/// One node's resources at one moment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Telemetry {
    pub at: UnixMillis,
    pub cpu_percent: f32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub disk_free_bytes: u64,
    /// Empty with `gpu_status` explaining why when there is no usable GPU.
    pub gpus: Vec<GpuTelemetry>,
    pub gpu_status: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuTelemetry {
    pub index: u32,
    pub name: String,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub utilization_percent: u32,
    pub temperature_c: u32,
    pub power_watts: f32,
    /// GPU memory per process, with the worker id when the process is one of ours.
    pub processes: Vec<GpuProcess>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_bytes: u64,
    pub worker: Option<WorkerId>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub agent_version: String,
    pub telemetry: Telemetry,
    pub workers: Vec<WorkerInfo>,
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: UnixMillis,
    /// `auth_ok`, `auth_failed`, `spawn`, `kill`, `restart`, `breaker_open`, `config`, …
    pub action: String,
    pub peer: Option<String>,
    pub worker: Option<WorkerId>,
    pub detail: String,
}
