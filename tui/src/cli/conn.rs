//! One connected node for a subcommand: ask, check the reply, report errors the way the CLI
//! does; and the same against every selected node at once.
use std::time::Duration;

use rbee_client::{Client, ClientError, Incoming};
use rbee_proto::session::{Reply, Request, WorkerInfo};

use crate::nodes::config::NodeTarget;
use crate::nodes::connect::connect;
use crate::nodes::describe::describe;
use crate::nodes::error::TuiError;

/// One connected node.
pub(super) struct Session {
    /// The node's name.
    pub(super) name: String,
    /// Requests go here.
    pub(super) client: Client,
    /// What the agent pushes.
    pub(super) incoming: tokio::sync::mpsc::Receiver<Incoming>,
}

/// Connect to `target` within `timeout`.
pub(super) async fn open(target: &NodeTarget, timeout: Duration) -> Result<Session, TuiError> {
    let c = connect(target, timeout).await?;
    Ok(Session {
        name: target.name().to_string(),
        client: c.client,
        incoming: c.incoming,
    })
}

impl Session {
    /// One request and its reply, within `timeout` (the agent's own deadline error wins).
    pub(super) async fn ask(&self, request: Request, timeout: Duration) -> Result<Reply, TuiError> {
        let what = describe(&request);
        let fut = self.client.request(request, Some(timeout));
        // A little beyond the deadline, so the agent's own deadline error wins when it answers.
        match tokio::time::timeout(timeout + Duration::from_secs(2), fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(source)) => Err(TuiError::Request {
                node: self.name.clone(),
                what,
                source,
            }),
            Err(_) => Err(TuiError::Request {
                node: self.name.clone(),
                what,
                source: ClientError::Timeout(timeout),
            }),
        }
    }

    /// The error for a reply that does not fit the request.
    pub(super) fn unexpected(&self, what: &str, reply: Reply) -> TuiError {
        TuiError::UnexpectedReply {
            node: self.name.clone(),
            what: what.into(),
            reply: format!("{reply:?}"),
        }
    }

    /// The node's workers.
    pub(super) async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerInfo>, TuiError> {
        match self.ask(Request::ListWorkers, timeout).await? {
            Reply::Workers { workers } => Ok(workers),
            other => Err(self.unexpected("list workers", other)),
        }
    }
}

/// Run `f` against every target concurrently; results in target order.
pub(super) async fn each_node<T, F, Fut>(
    targets: &[NodeTarget],
    timeout: Duration,
    f: F,
) -> Vec<(String, Result<T, TuiError>)>
where
    F: Fn(Session) -> Fut,
    Fut: std::future::Future<Output = Result<T, TuiError>>,
{
    let futs = targets.iter().map(|t| {
        let f = &f;
        async move {
            let r = match open(t, timeout).await {
                Ok(s) => f(s).await,
                Err(e) => Err(e),
            };
            (t.name().to_string(), r)
        }
    });
    futures_util::future::join_all(futs).await
}
