//! What the dashboard knows, as plain data. No I/O and no clocks: `now` is set by whoever feeds
//! actions in, so tests build any state they like and render it.
use std::collections::VecDeque;

use rbee_proto::session::Telemetry;
use rbee_proto::session::{ModelEntry, WorkerInfo};
use rbee_proto::{ChatMessage, FinishReason, UnixMillis, Usage, WorkerId, WorkerState};

use crate::dashboard::board::RequestRow;
use crate::nodes::config::AddNodeRequest;

/// Position of a node in `State::nodes`; nodes are fixed for the life of the dashboard.
pub type NodeIdx = usize;

/// Id the dashboard gives each prompt it sends, to match streamed tokens to the pane.
pub type PromptId = u64;

/// Samples kept per graph (two minutes at one sample a second).
pub const HISTORY_LEN: usize = 120;
/// Entries kept in the events list.
pub const EVENTS_LEN: usize = 1000;
/// Log lines kept per worker.
pub const LOG_LEN: usize = 500;
/// State changes kept per worker.
pub const STATE_HISTORY_LEN: usize = 50;

/// A bounded series for a sparkline; the oldest sample falls off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    samples: VecDeque<u64>,
}

impl History {
    /// Add the newest sample.
    pub fn push(&mut self, v: u64) {
        if self.samples.len() == HISTORY_LEN {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    /// The newest sample.
    pub fn last(&self) -> Option<u64> {
        self.samples.back().copied()
    }

    /// The newest `n` samples, oldest first.
    pub fn tail(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).copied().collect()
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No samples yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

impl FromIterator<u64> for History {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut h = History::default();
        for v in iter {
            h.push(v);
        }
        h
    }
}

/// The session to a node, as the operator needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    /// An attempt is under way.
    Connecting {
        /// Attempts since the last success (0 = first).
        attempt: u32,
    },
    /// Subscribed and following.
    Connected,
    /// Down; the session retries on its own.
    Unreachable {
        /// Why, in one line.
        reason: String,
        /// When the next attempt starts, as last reported.
        retry_in_ms: u64,
        /// When it went down (our clock).
        since: UnixMillis,
    },
}

impl Conn {
    /// One word for tables and filters.
    pub fn label(&self) -> &'static str {
        match self {
            Conn::Connecting { .. } => "connecting",
            Conn::Connected => "connected",
            Conn::Unreachable { .. } => "unreachable",
        }
    }
}

/// Everything the dashboard knows about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Name in the config (or `local`).
    pub name: String,
    /// Where its session goes (before the first connection: how it is reached).
    pub url: String,
    /// The session's state.
    pub conn: Conn,
    /// From the handshake.
    pub agent_version: Option<String>,
    /// Name the agent reports for itself (host name by default).
    pub agent_node: Option<String>,
    /// Last `Ping` round trip.
    pub latency_ms: Option<u64>,
    /// The agent's clock minus this machine's, from the last `Ping` (positive: ahead).
    pub clock_offset_ms: Option<i64>,
    /// The latest telemetry.
    pub telemetry: Option<Telemetry>,
    /// CPU percent, one sample per telemetry.
    pub cpu_history: History,
    /// Used VRAM in percent, one series per GPU in telemetry order.
    pub gpu_history: Vec<History>,
    /// Sum of the workers' tokens/s, sampled with each telemetry.
    pub tokps_history: History,
    /// Sorted by id in natural order (w2 before w10).
    pub workers: Vec<WorkerView>,
    /// The node's model catalog (`ListModels`).
    pub models: Vec<ModelEntry>,
    /// Model pulls under way on the node, from `PullProgress` events.
    pub pulls: Vec<PullView>,
}

/// One model download on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct PullView {
    /// The `hf:` reference being pulled.
    pub model: String,
    /// File being downloaded now; empty once the pull is complete.
    pub file: String,
    /// Bytes so far.
    pub downloaded_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
}

impl NodeState {
    /// A node not connected yet, shown as `url` until its session says where it went.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            conn: Conn::Connecting { attempt: 0 },
            agent_version: None,
            agent_node: None,
            latency_ms: None,
            clock_offset_ms: None,
            telemetry: None,
            cpu_history: History::default(),
            gpu_history: Vec::new(),
            tokps_history: History::default(),
            workers: Vec::new(),
            models: Vec::new(),
            pulls: Vec::new(),
        }
    }

    /// The worker with this id.
    pub fn worker(&self, id: &str) -> Option<&WorkerView> {
        self.workers.iter().find(|w| w.info.id == id)
    }

    /// The worker with this id, to change.
    pub fn worker_mut(&mut self, id: &str) -> Option<&mut WorkerView> {
        self.workers.iter_mut().find(|w| w.info.id == id)
    }

    /// Sum of the workers' tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.workers.iter().map(|w| w.info.tokens_per_s).sum()
    }

    /// Workers that are not gone for good.
    pub fn live_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| !w.info.state.is_terminal())
            .count()
    }

    /// Devices offered in the spawn dialog: on a node with GPUs `auto` first (the agent picks
    /// the GPU with the most free memory that fits), then the CPU, then each GPU; else the CPU.
    pub fn devices(&self) -> Vec<String> {
        let gpus = self.telemetry.as_ref().map_or(&[][..], |t| &t.gpus[..]);
        let mut d = Vec::with_capacity(gpus.len() + 2);
        if !gpus.is_empty() {
            d.push("auto".to_string());
        }
        d.push("cpu".to_string());
        d.extend(gpus.iter().map(|g| format!("cuda:{}", g.index)));
        d
    }

    /// How the spawn dialog shows `device`: a GPU with its name and free memory, and whether
    /// the node has a CUDA worker for it.
    pub fn device_label(&self, device: &str) -> String {
        let Some(t) = &self.telemetry else {
            return device.to_string();
        };
        let no_cuda = !t.backends.is_empty() && !t.backends.iter().any(|b| b == "cuda");
        let gpu = device
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(|i| t.gpus.iter().find(|g| g.index == i));
        match (device, gpu) {
            ("auto", _) if no_cuda => "auto (cpu: no CUDA worker on this node)".into(),
            ("auto", _) => "auto (the GPU with the most free memory)".into(),
            (_, Some(g)) => format!(
                "{device} {} ({} free){}",
                g.name,
                rbee_proto::fmt::bytes(g.mem_total_bytes.saturating_sub(g.mem_used_bytes)),
                if no_cuda { ", no CUDA worker" } else { "" }
            ),
            _ => device.to_string(),
        }
    }
}

/// Ordering key that puts `w2` before `w10`.
pub fn natural_key(id: &str) -> (String, u64, String) {
    let digits_at = id.find(|c: char| c.is_ascii_digit()).unwrap_or(id.len());
    let (head, rest) = id.split_at(digits_at);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let num = rest[..end].parse().unwrap_or(0);
    (head.to_string(), num, rest[end..].to_string())
}

/// One state change of a worker, for its history.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// When (our clock).
    pub at: UnixMillis,
    /// The new state.
    pub state: WorkerState,
    /// The agent's detail at that moment.
    pub detail: String,
}

/// One worker as the dashboard follows it: the agent's view plus what we keep over time.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// The agent's latest word on it.
    pub info: WorkerInfo,
    /// When the last heartbeat arrived (our clock).
    pub heartbeat_at: Option<UnixMillis>,
    /// Newest last.
    pub states: VecDeque<StateChange>,
    /// Tokens per second, one sample per heartbeat.
    pub tokps: History,
    /// Newest last.
    pub log: VecDeque<String>,
    /// From `WorkerReady`.
    pub spawn_to_ready_ms: Option<u64>,
}

impl WorkerView {
    /// A worker first seen at `now`.
    pub fn new(info: WorkerInfo, now: UnixMillis) -> Self {
        let mut w = Self {
            heartbeat_at: info.heartbeat_age_ms.map(|a| now.saturating_sub(a)),
            states: VecDeque::new(),
            tokps: History::default(),
            log: VecDeque::new(),
            spawn_to_ready_ms: None,
            info,
        };
        w.record_state(now);
        w
    }

    pub(crate) fn record_state(&mut self, at: UnixMillis) {
        if self.states.len() == STATE_HISTORY_LEN {
            self.states.pop_front();
        }
        self.states.push_back(StateChange {
            at,
            state: self.info.state,
            detail: self.info.detail.clone(),
        });
    }

    /// How long since its last heartbeat, if it ever sent one.
    pub fn heartbeat_age_ms(&self, now: UnixMillis) -> Option<u64> {
        self.heartbeat_at.map(|t| now.saturating_sub(t))
    }

    /// Add a log line, dropping the oldest past `LOG_LEN`.
    pub fn push_log(&mut self, line: String) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }
}

/// Which view fills the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    /// Every node in a table, the selected one summed up below.
    Nodes,
    /// One node: gauges, history, its workers.
    Node(NodeIdx),
    /// One worker: state, history, log.
    Worker(NodeIdx, WorkerId),
    /// Worker state changes, audit entries and errors of every node.
    Events,
    /// The API traffic of the gateway the dashboard runs (`--serve`).
    Requests,
}

impl Screen {
    /// The screen's name.
    pub fn title(&self) -> &'static str {
        match self {
            Screen::Nodes => "Nodes",
            Screen::Node(_) => "Node",
            Screen::Worker(..) => "Worker",
            Screen::Events => "Events",
            Screen::Requests => "Requests",
        }
    }

    /// The node this screen is about, if any.
    pub fn node(&self) -> Option<NodeIdx> {
        match self {
            Screen::Node(n) | Screen::Worker(n, _) => Some(*n),
            _ => None,
        }
    }
}

/// An action waiting for `y`. One mechanism for every "are you sure?".
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// Stop a worker for good.
    Kill {
        /// Its node.
        node: NodeIdx,
        /// The worker.
        worker: WorkerId,
    },
    /// Restart a worker.
    Restart {
        /// Its node.
        node: NodeIdx,
        /// The worker.
        worker: WorkerId,
    },
    /// Stop every worker of a node for good (`U` / `:unload-all`); the ids as they were when asked.
    UnloadAll {
        /// The node.
        node: NodeIdx,
        /// Its workers at the time of asking.
        workers: Vec<WorkerId>,
    },
    /// `:add` met a host key it does not know: trust it (`key` is "ALGO SHA256:…") and go on?
    TrustHostKey {
        /// The `:add` to run again.
        req: AddNodeRequest,
        /// `HOST:PORT`.
        host: String,
        /// "ALGO SHA256:…"
        key: String,
    },
}

/// The spawn dialog's fields, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnField {
    /// Which model of the node's catalog.
    Model,
    /// CPU or which GPU.
    Device,
    /// How many workers.
    Count,
}

/// The `s` dialog. Model and device are indices into the node's catalog and device list, which
/// may fill in while the dialog is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnDialog {
    /// The node to spawn on.
    pub node: NodeIdx,
    /// The field the arrows change.
    pub field: SpawnField,
    /// Index into the node's models.
    pub model: usize,
    /// Index into the node's devices.
    pub device: usize,
    /// Workers to spawn.
    pub count: u32,
}

/// Most workers one dialog submission spawns.
pub const MAX_SPAWN_COUNT: u32 = 16;

/// What floats over the screen and takes the keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    /// The `?` overlay.
    Help,
    /// "Are you sure?" for a pending action.
    Confirm(Pending),
    /// The `s` dialog.
    Spawn(SpawnDialog),
}

/// What the status line is being typed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `/`: narrows the current table as you type.
    Filter,
    /// `:`: a command such as `nodes`, `events`, `q`.
    Command,
}

/// The status line while the operator types into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLine {
    /// Filter or command.
    pub kind: InputKind,
    /// What is typed so far.
    pub text: String,
}

/// One generation started from the prompt pane.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptRun {
    /// The id its actions carry.
    pub id: PromptId,
    /// Still streaming.
    pub active: bool,
    /// When the request left (our clock).
    pub sent_at: Option<UnixMillis>,
    /// When the first token arrived.
    pub first_token_at: Option<UnixMillis>,
    /// When the latest token arrived.
    pub last_token_at: Option<UnixMillis>,
    /// Tokens received.
    pub tokens: u32,
    /// The agent's figures, once done.
    pub usage: Option<Usage>,
    /// Why it stopped, once done.
    pub finish: Option<FinishReason>,
    /// The worker that answers (asked for, or reported at the end).
    pub worker: Option<WorkerId>,
    /// Why it failed.
    pub error: Option<String>,
    /// The operator stopped it.
    pub cancelled: bool,
}

impl PromptRun {
    /// Time to first token: the agent's figure once done, our own measurement while streaming.
    pub fn ttft_ms(&self) -> Option<f64> {
        if let Some(u) = &self.usage {
            return Some(u.time_to_first_token_ms);
        }
        Some(self.first_token_at?.saturating_sub(self.sent_at?) as f64)
    }

    /// Decode speed: the agent's figure once done, else tokens over time since the first.
    pub fn tokens_per_s(&self) -> Option<f64> {
        if let Some(u) = &self.usage {
            return Some(u.decode_tokens_per_s);
        }
        let span = self.last_token_at?.saturating_sub(self.first_token_at?);
        (self.tokens > 1 && span > 0).then(|| (self.tokens - 1) as f64 * 1000.0 / span as f64)
    }
}

/// The `p` pane: a prompt for one worker (or any ready worker of a model) and its streamed answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptPane {
    /// The node prompted.
    pub node: NodeIdx,
    /// The worker prompted, if one was picked.
    pub worker: Option<WorkerId>,
    /// The model (any ready worker of it when no worker is picked).
    pub model: Option<String>,
    /// Keys go to the pane (typing) rather than to the table.
    pub focused: bool,
    /// What is typed so far.
    pub input: String,
    /// The question being answered (or the last one that failed), shown above its answer.
    pub asked: String,
    /// The answer so far.
    pub output: String,
    /// The latest generation.
    pub run: Option<PromptRun>,
    /// The conversation's finished turns (user, assistant, …), sent again with each new turn.
    pub history: Vec<ChatMessage>,
    /// The system turn that frames the conversation; empty when none.
    pub system: String,
    /// The model has no chat template: turns go as plain completions of the typed text.
    pub completion: bool,
}

/// What an events-list entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A worker changed state.
    State,
    /// The agent's audit log.
    Audit,
    /// Something failed.
    Error,
    /// Connections and the like.
    Info,
}

impl EventKind {
    /// One word for the table and filters.
    pub fn label(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Audit => "audit",
            EventKind::Error => "error",
            EventKind::Info => "info",
        }
    }
}

/// One line of the events list.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEntry {
    /// When (our clock, or the agent's for audit entries).
    pub at: UnixMillis,
    /// The node's name.
    pub node: String,
    /// What about.
    pub kind: EventKind,
    /// What happened.
    pub text: String,
}

/// A one-line message under the body, cleared by the next key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// The message.
    pub text: String,
    /// Shown in red.
    pub error: bool,
}

/// The whole dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Every node followed, in config order (`:add` appends).
    pub nodes: Vec<NodeState>,
    /// What fills the body.
    pub screen: Screen,
    /// Where Tab/Esc on the Events screen returns to.
    pub events_return: Screen,
    /// Selected row of the Nodes screen.
    pub node_sel: NodeIdx,
    /// Selected row of the Node screen's workers table.
    pub worker_sel: Option<WorkerId>,
    /// Selected row of the Events screen (0 = newest).
    pub event_sel: usize,
    /// The `/` filter of the current table.
    pub filter: String,
    /// The status line while typing into it.
    pub input: Option<InputLine>,
    /// What floats over the screen.
    pub popup: Option<Popup>,
    /// The prompt pane, when open.
    pub prompt: Option<PromptPane>,
    /// Id for the next prompt sent.
    pub next_prompt: PromptId,
    /// Newest first.
    pub events: VecDeque<EventEntry>,
    /// The message under the body.
    pub flash: Option<Flash>,
    /// When the open worker screen last asked for its log.
    pub log_fetched_at: UnixMillis,
    /// The clock, set by whoever feeds actions in.
    pub now: UnixMillis,
    /// The operator asked to leave.
    pub should_quit: bool,
    /// Something visible changed since the last frame.
    pub dirty: bool,
    /// Where the gateway listens when the dashboard runs one (`--serve`).
    pub serving: Option<String>,
    /// The gateway's requests as of the last clock tick, oldest first.
    pub requests: Vec<RequestRow>,
}

impl State {
    /// The dashboard's start: the Nodes screen over `nodes`.
    pub fn new(nodes: Vec<NodeState>) -> Self {
        Self {
            nodes,
            screen: Screen::Nodes,
            events_return: Screen::Nodes,
            node_sel: 0,
            worker_sel: None,
            event_sel: 0,
            filter: String::new(),
            input: None,
            popup: None,
            prompt: None,
            next_prompt: 1,
            events: VecDeque::new(),
            flash: None,
            log_fetched_at: 0,
            now: 0,
            should_quit: false,
            dirty: true,
            serving: None,
            requests: Vec::new(),
        }
    }

    /// Add an entry on top of the events list, dropping the oldest past `EVENTS_LEN`.
    pub fn push_event(&mut self, node: &str, kind: EventKind, text: impl Into<String>) {
        if self.events.len() == EVENTS_LEN {
            self.events.pop_back();
        }
        // Agents and workers write these texts: no control character may reach the terminal.
        let text: String = text.into();
        self.events.push_front(EventEntry {
            at: self.now,
            node: rbee_proto::fmt::printable(node).into_owned(),
            kind,
            text: rbee_proto::fmt::log_line(&text).into_owned(),
        });
        // Keep the selected row on the same entry while new ones arrive on top.
        if self.screen == Screen::Events && self.event_sel > 0 {
            self.event_sel = (self.event_sel + 1).min(self.events.len() - 1);
        }
    }

    /// The node's name, or `node#N` for an index nobody knows (events must still say something).
    pub fn node_name(&self, node: NodeIdx) -> String {
        self.nodes
            .get(node)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node#{node}"))
    }

    /// Say something under the body until the next key.
    pub fn flash(&mut self, text: impl Into<String>) {
        self.flash = Some(Flash {
            text: text.into(),
            error: false,
        });
    }

    /// Say what went wrong under the body until the next key.
    pub fn flash_error(&mut self, text: impl Into<String>) {
        self.flash = Some(Flash {
            text: text.into(),
            error: true,
        });
    }

    fn matches(&self, hay: &[&str]) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let needle = self.filter.to_lowercase();
        hay.iter().any(|h| h.to_lowercase().contains(&needle))
    }

    /// Node indices shown on the Nodes screen (after the filter).
    pub fn visible_nodes(&self) -> Vec<NodeIdx> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                self.matches(&[&n.name, &n.url, n.conn.label()])
            })
            .collect()
    }

    /// Workers of `node` shown on the Node screen (after the filter).
    pub fn visible_workers(&self, node: NodeIdx) -> Vec<&WorkerView> {
        let Some(n) = self.nodes.get(node) else {
            return Vec::new();
        };
        n.workers
            .iter()
            .filter(|w| {
                self.matches(&[
                    &w.info.id,
                    &w.info.model,
                    w.info.state.as_str(),
                    &w.info.device,
                ])
            })
            .collect()
    }

    /// Events shown on the Events screen (after the filter), newest first.
    pub fn visible_events(&self) -> Vec<&EventEntry> {
        self.events
            .iter()
            .filter(|e| self.matches(&[&e.node, e.kind.label(), &e.text]))
            .collect()
    }

    /// The worker the keys act on: the Worker screen's, or the selected row of the Node screen.
    pub fn selected_worker(&self) -> Option<(NodeIdx, WorkerId)> {
        match &self.screen {
            Screen::Worker(n, w) => Some((*n, w.clone())),
            Screen::Node(n) => {
                let visible = self.visible_workers(*n);
                let sel = self
                    .worker_sel
                    .as_ref()
                    .and_then(|s| visible.iter().find(|w| &w.info.id == s));
                sel.or(visible.first()).map(|w| (*n, w.info.id.clone()))
            }
            _ => None,
        }
    }

    /// The node the keys act on.
    pub fn current_node(&self) -> NodeIdx {
        match &self.screen {
            Screen::Node(n) | Screen::Worker(n, _) => *n,
            _ => self.node_sel,
        }
    }
}
