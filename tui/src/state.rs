//! What the dashboard knows, as plain data. No I/O and no clocks: `now` is set by whoever feeds
//! actions in, so tests build any state they like and render it.
use std::collections::VecDeque;

use rbee_proto::session::Telemetry;
use rbee_proto::session::{ModelEntry, WorkerInfo};
use rbee_proto::{FinishReason, UnixMillis, Usage, WorkerId, WorkerState};

use crate::action::PromptId;

/// Position of a node in `State::nodes`; nodes are fixed for the life of the dashboard.
pub type NodeIdx = usize;

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
    pub fn push(&mut self, v: u64) {
        if self.samples.len() == HISTORY_LEN {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    pub fn last(&self) -> Option<u64> {
        self.samples.back().copied()
    }

    /// The newest `n` samples, oldest first.
    pub fn tail(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).copied().collect()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

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
    Connecting {
        attempt: u32,
    },
    Connected,
    Unreachable {
        reason: String,
        retry_in_ms: u64,
        since: UnixMillis,
    },
}

impl Conn {
    pub fn label(&self) -> &'static str {
        match self {
            Conn::Connecting { .. } => "connecting",
            Conn::Connected => "connected",
            Conn::Unreachable { .. } => "unreachable",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Name in the config (or `local`).
    pub name: String,
    pub url: String,
    pub conn: Conn,
    pub agent_version: Option<String>,
    /// Name the agent reports for itself (host name by default).
    pub agent_node: Option<String>,
    pub latency_ms: Option<u64>,
    pub telemetry: Option<Telemetry>,
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
    pub model: String,
    /// File being downloaded now; empty once the pull is complete.
    pub file: String,
    pub downloaded_bytes: u64,
    pub total_bytes: u64,
}

impl NodeState {
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            conn: Conn::Connecting { attempt: 0 },
            agent_version: None,
            agent_node: None,
            latency_ms: None,
            telemetry: None,
            cpu_history: History::default(),
            gpu_history: Vec::new(),
            tokps_history: History::default(),
            workers: Vec::new(),
            models: Vec::new(),
            pulls: Vec::new(),
        }
    }

    pub fn worker(&self, id: &str) -> Option<&WorkerView> {
        self.workers.iter().find(|w| w.info.id == id)
    }

    pub fn worker_mut(&mut self, id: &str) -> Option<&mut WorkerView> {
        self.workers.iter_mut().find(|w| w.info.id == id)
    }

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

    /// Devices offered in the spawn dialog: CPU, then each GPU.
    pub fn devices(&self) -> Vec<String> {
        let mut d = vec!["cpu".to_string()];
        if let Some(t) = &self.telemetry {
            d.extend(t.gpus.iter().map(|g| format!("cuda:{}", g.index)));
        }
        d
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
    pub at: UnixMillis,
    pub state: WorkerState,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub info: WorkerInfo,
    /// When the last heartbeat arrived (our clock).
    pub heartbeat_at: Option<UnixMillis>,
    /// Newest last.
    pub states: VecDeque<StateChange>,
    pub tokps: History,
    /// Newest last.
    pub log: VecDeque<String>,
    pub spawn_to_ready_ms: Option<u64>,
}

impl WorkerView {
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

    pub fn heartbeat_age_ms(&self, now: UnixMillis) -> Option<u64> {
        self.heartbeat_at.map(|t| now.saturating_sub(t))
    }

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
    Nodes,
    Node(NodeIdx),
    Worker(NodeIdx, WorkerId),
    Events,
}

impl Screen {
    pub fn title(&self) -> &'static str {
        match self {
            Screen::Nodes => "Nodes",
            Screen::Node(_) => "Node",
            Screen::Worker(..) => "Worker",
            Screen::Events => "Events",
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
    Kill {
        node: NodeIdx,
        worker: WorkerId,
    },
    Restart {
        node: NodeIdx,
        worker: WorkerId,
    },
    /// `:add` met a host key it does not know: trust it (`key` is "ALGO SHA256:…") and go on?
    TrustHostKey {
        req: crate::ssh::AddNodeRequest,
        host: String,
        key: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnField {
    Model,
    Device,
    Count,
}

/// The `s` dialog. Model and device are indices into the node's catalog and device list, which
/// may fill in while the dialog is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnDialog {
    pub node: NodeIdx,
    pub field: SpawnField,
    pub model: usize,
    pub device: usize,
    pub count: u32,
}

/// Most workers one dialog submission spawns.
pub const MAX_SPAWN_COUNT: u32 = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    Help,
    Confirm(Pending),
    Spawn(SpawnDialog),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `/`: narrows the current table as you type.
    Filter,
    /// `:`: a command such as `nodes`, `events`, `q`.
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLine {
    pub kind: InputKind,
    pub text: String,
}

/// One generation started from the prompt pane.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptRun {
    pub id: PromptId,
    /// Still streaming.
    pub active: bool,
    pub sent_at: Option<UnixMillis>,
    pub first_token_at: Option<UnixMillis>,
    pub last_token_at: Option<UnixMillis>,
    pub tokens: u32,
    pub usage: Option<Usage>,
    pub finish: Option<FinishReason>,
    pub worker: Option<WorkerId>,
    pub error: Option<String>,
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
    pub node: NodeIdx,
    pub worker: Option<WorkerId>,
    pub model: Option<String>,
    /// Keys go to the pane (typing) rather than to the table.
    pub focused: bool,
    pub input: String,
    /// The last prompt sent, shown above its answer.
    pub asked: String,
    pub output: String,
    pub run: Option<PromptRun>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    State,
    Audit,
    Error,
    Info,
}

impl EventKind {
    pub fn label(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Audit => "audit",
            EventKind::Error => "error",
            EventKind::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventEntry {
    pub at: UnixMillis,
    pub node: String,
    pub kind: EventKind,
    pub text: String,
}

/// A one-line message under the body, cleared by the next key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub text: String,
    pub error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub nodes: Vec<NodeState>,
    pub screen: Screen,
    /// Where Tab/Esc on the Events screen returns to.
    pub events_return: Screen,
    pub node_sel: NodeIdx,
    /// Selected row of the Node screen's workers table.
    pub worker_sel: Option<WorkerId>,
    /// Selected row of the Events screen (0 = newest).
    pub event_sel: usize,
    pub filter: String,
    pub input: Option<InputLine>,
    pub popup: Option<Popup>,
    pub prompt: Option<PromptPane>,
    pub next_prompt: PromptId,
    /// Newest first.
    pub events: VecDeque<EventEntry>,
    pub flash: Option<Flash>,
    /// When the open worker screen last asked for its log.
    pub log_fetched_at: UnixMillis,
    pub now: UnixMillis,
    pub should_quit: bool,
    /// Something visible changed since the last frame.
    pub dirty: bool,
    /// An SSH node to add (`:add`), for the event loop to bring up.
    pub add_node: Option<crate::ssh::AddNodeRequest>,
}

impl State {
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
            add_node: None,
        }
    }

    pub fn push_event(&mut self, node: &str, kind: EventKind, text: impl Into<String>) {
        if self.events.len() == EVENTS_LEN {
            self.events.pop_back();
        }
        self.events.push_front(EventEntry {
            at: self.now,
            node: node.into(),
            kind,
            text: text.into(),
        });
        // Keep the selected row on the same entry while new ones arrive on top.
        if self.screen == Screen::Events && self.event_sel > 0 {
            self.event_sel = (self.event_sel + 1).min(self.events.len() - 1);
        }
    }

    pub fn flash(&mut self, text: impl Into<String>) {
        self.flash = Some(Flash {
            text: text.into(),
            error: false,
        });
    }

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
