//! What a handler gets: the agent, the session's outgoing queue and in-flight inferences.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rbee_proto::session::{Reply, ServerMsg};
use rbee_proto::{ErrorCode, ProtoError, RequestId, WorkerId};
use tokio::sync::mpsc;

use crate::server::shared::Shared;

/// In-flight inferences of one session: client id → (worker, worker-side id).
pub(crate) type Inflight = Arc<Mutex<HashMap<RequestId, (WorkerId, u64)>>>;

/// What a handler can reach: the agent, this session's outgoing queue and in-flight inferences,
/// and who asked (for the audit log).
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub out: mpsc::Sender<ServerMsg>,
    pub inflight: Inflight,
    pub peer: String,
}

impl Ctx {
    /// Queue an error for the client.
    pub async fn send_error(&self, id: Option<RequestId>, code: ErrorCode, message: String) {
        let _ = self.out.send(ServerMsg::Error { id, code, message }).await;
    }

    pub fn peer(&self) -> Option<String> {
        Some(self.peer.clone())
    }
}

/// A handler's answer: a reply now, nothing (the reply comes later, from a worker), or an error.
pub(crate) type Answer = Result<Option<Reply>, ProtoError>;
