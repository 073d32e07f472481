//! The dashboard's reconnecting session to one node: connect with backoff (`nodes::connect`, so a
//! local or SSH node's agent is brought up again when it died), subscribe, forward everything the
//! agent says as `Action`s, carry out `Effect`s, and on a drop say why and try again. Requests to
//! a node that is down are refused at once with the reason.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_client::{Client, Incoming, Streamed};
use rbee_proto::now_millis;
use rbee_proto::policy::RestartPolicy;
use rbee_proto::session::{Reply, Request};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::dashboard::action::{Action, Effect, InferDone};
use crate::dashboard::state::{NodeIdx, PromptId};
use crate::nodes::config::NodeTarget;
use crate::nodes::connect::{connect, reason, Connection, CONNECT_TIMEOUT};
use crate::nodes::describe::describe;

/// Deadline the dashboard gives each request (the agent cancels work past it).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How often the dashboard measures latency.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// Nothing heard from the agent (no event, no pong) for this long: the link is dead even if the
/// socket has not noticed yet (a cable pulled, a frozen host). The session is dropped and redialled.
pub const SILENT_LIMIT: Duration = Duration::from_secs(10);

/// Most messages a loop takes from a queue that has them ready before it looks at its other
/// inputs again (a key press, a tick): fewer wake-ups under a flood, no starvation.
pub const DRAIN: usize = 256;

/// Reconnect delays: 1 s, 2 s, 4 s … capped at 30 s, each spread by ±20 % (`rbee_client::reconnect_delay`).
pub fn reconnect_policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff_ms: 1000,
        max_backoff_ms: 30_000,
        ..RestartPolicy::default()
    }
}

/// How a served session ended.
enum Ended {
    /// The dashboard is going away.
    Shutdown,
    /// The connection dropped, for this reason.
    Dropped(String),
}

/// The dashboard's task for one node. Returns when `effects` closes (the dashboard quit) or
/// `actions` closes.
pub async fn run_node(
    node: NodeIdx,
    target: NodeTarget,
    actions: mpsc::Sender<Action>,
    mut effects: mpsc::Receiver<Effect>,
) {
    let policy = reconnect_policy();
    let mut attempt = 0u32;
    loop {
        if actions
            .send(Action::Connecting { node, attempt })
            .await
            .is_err()
        {
            return;
        }
        let reason = match connect(&target, CONNECT_TIMEOUT).await {
            Ok(Connection {
                client,
                incoming,
                url,
            }) => {
                attempt = 0;
                tracing::info!(node = target.name(), agent = %client.node, %url, "connected");
                let connected = Action::Connected {
                    node,
                    url,
                    agent_version: client.agent_version.clone(),
                    agent_node: client.node.clone(),
                };
                if actions.send(connected).await.is_err() {
                    return;
                }
                match serve(node, &client, incoming, &actions, &mut effects).await {
                    Ended::Shutdown => return,
                    Ended::Dropped(reason) => reason,
                }
            }
            Err(e) => reason(&e),
        };
        let delay = rbee_client::reconnect_delay(&policy, attempt);
        attempt = attempt.saturating_add(1);
        tracing::warn!(node = target.name(), %reason, retry_in_ms = delay.as_millis() as u64, "node unreachable");
        let down = Action::Disconnected {
            node,
            reason: reason.clone(),
            retry_in_ms: delay.as_millis() as u64,
        };
        if actions.send(down).await.is_err() {
            return;
        }
        // Wait out the backoff, refusing work at once so the operator is not left waiting.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                e = effects.recv() => match e {
                    None => return,
                    Some(e) => refuse(node, e, &reason, &actions).await,
                },
            }
        }
    }
}

async fn refuse(node: NodeIdx, effect: Effect, reason: &str, actions: &mpsc::Sender<Action>) {
    let msg = format!("node unreachable: {reason}");
    let action = match effect {
        Effect::Request { request, .. } => Action::Reply {
            node,
            request,
            result: Err(msg),
        },
        Effect::Infer { prompt, .. } => Action::PromptDone {
            prompt,
            result: Err(msg),
            at: now_millis(),
        },
        // Adding a node is the runtime's, never a session's.
        Effect::CancelInfer { .. } | Effect::AddNode(_) => return,
    };
    let _ = actions.send(action).await;
}

async fn serve(
    node: NodeIdx,
    client: &Client,
    mut incoming: mpsc::Receiver<Incoming>,
    actions: &mpsc::Sender<Action>,
    effects: &mut mpsc::Receiver<Effect>,
) -> Ended {
    // Subscribe before taking snapshots, so nothing between the two is missed. An agent that does
    // not answer this within the silence limit is as dead as one that goes quiet later.
    if let Err(e) = client.request(Request::Subscribe, Some(SILENT_LIMIT)).await {
        return Ended::Dropped(format!("subscribe failed: {e}"));
    }
    // Dropping the set (when this function returns) aborts whatever is still in flight.
    let mut tasks = JoinSet::new();
    let mut prompts: HashMap<PromptId, oneshot::Sender<()>> = HashMap::new();
    for request in [Request::ListWorkers, Request::Status, Request::ListModels] {
        tasks.spawn(send_request(node, client.clone(), request, actions.clone()));
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heard = Arc::new(Mutex::new(Instant::now()));
    loop {
        tokio::select! {
            msg = incoming.recv() => {
                *heard.lock().unwrap() = Instant::now();
                // Forward what else has arrived too, without a trip through `select!` each.
                let mut next = msg;
                for _ in 0..DRAIN {
                    let action = match next {
                        Some(Incoming::Event(event)) => Action::AgentEvent { node, event },
                        Some(Incoming::Error(error)) => Action::AgentError { node, error },
                        Some(Incoming::Closed(reason)) => return Ended::Dropped(reason),
                        None => return Ended::Dropped("session closed".into()),
                    };
                    if actions.send(action).await.is_err() {
                        return Ended::Shutdown;
                    }
                    match incoming.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(_) => break,
                    }
                }
            }
            e = effects.recv() => match e {
                None => return Ended::Shutdown,
                Some(Effect::Request { request, .. }) => {
                    tasks.spawn(send_request(node, client.clone(), request, actions.clone()));
                }
                Some(Effect::Infer { prompt, request, .. }) => {
                    prompts.retain(|_, tx| !tx.is_closed());
                    let (tx, rx) = oneshot::channel();
                    prompts.insert(prompt, tx);
                    tasks.spawn(run_infer(client.clone(), prompt, request, actions.clone(), rx));
                }
                Some(Effect::CancelInfer { prompt, .. }) => {
                    if let Some(tx) = prompts.remove(&prompt) {
                        let _ = tx.send(());
                    }
                }
                Some(Effect::AddNode(_)) => {}
            },
            _ = ping.tick() => {
                let silent = heard.lock().unwrap().elapsed();
                if silent >= SILENT_LIMIT {
                    return Ended::Dropped(format!("no answer from the agent for {} s", silent.as_secs()));
                }
                tasks.spawn(measure_latency(node, client.clone(), actions.clone(), heard.clone()));
            }
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!(node, "request task panicked: {e}");
                    }
                }
            }
        }
    }
}

async fn send_request(
    node: NodeIdx,
    client: Client,
    request: Request,
    actions: mpsc::Sender<Action>,
) {
    let result = client
        .request(request.clone(), Some(REQUEST_DEADLINE))
        .await
        .map_err(|e| e.to_string());
    if let Err(e) = &result {
        tracing::warn!(node, what = %describe(&request), error = %e, "request failed");
    }
    let _ = actions
        .send(Action::Reply {
            node,
            request,
            result,
        })
        .await;
}

async fn measure_latency(
    node: NodeIdx,
    client: Client,
    actions: mpsc::Sender<Action>,
    heard: Arc<Mutex<Instant>>,
) {
    if let Ok(sample) = client.ping(PING_EVERY * 2).await {
        *heard.lock().unwrap() = Instant::now();
        let latency = Action::Latency {
            node,
            ms: sample.rtt.as_millis() as u64,
            clock_offset_ms: sample.clock_offset_ms,
        };
        let _ = actions.send(latency).await;
    }
}

/// Stream one prompt's tokens to the dashboard. A cancel asks the agent to stop and keeps reading
/// until it confirms, so the stream's end is always reported.
async fn run_infer(
    client: Client,
    prompt: PromptId,
    request: Request,
    actions: mpsc::Sender<Action>,
    mut cancel: oneshot::Receiver<()>,
) {
    let done = |result| Action::PromptDone {
        prompt,
        result,
        at: now_millis(),
    };
    let mut stream = match client.start(request, None).await {
        Ok(s) => s,
        Err(e) => {
            let _ = actions.send(done(Err(e.to_string()))).await;
            return;
        }
    };
    let _ = actions
        .send(Action::PromptSent {
            prompt,
            at: now_millis(),
        })
        .await;
    let mut cancelling = false;
    loop {
        tokio::select! {
            item = stream.next() => {
                let result = match item {
                    Some(Streamed::Token(text)) => {
                        if actions.send(Action::PromptToken { prompt, text, at: now_millis() }).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Streamed::Reply(Reply::InferDone { worker, finish_reason, usage })) => {
                        Ok(InferDone { worker, finish_reason, usage })
                    }
                    Some(Streamed::Reply(other)) => Err(format!("unexpected reply to infer: {other:?}")),
                    Some(Streamed::Error(e)) => Err(e.to_string()),
                    None => Err("session closed".to_string()),
                };
                let _ = actions.send(done(result)).await;
                return;
            }
            _ = &mut cancel, if !cancelling => {
                cancelling = true;
                if let Err(e) = stream.cancel().await {
                    let _ = actions.send(done(Err(format!("cancel failed: {e}")))).await;
                    return;
                }
            }
        }
    }
}
