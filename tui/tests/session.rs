//! The dashboard's node session against a real socket: connect, subscribe, snapshots, effects,
//! streaming, cancel, and reconnect with backoff after the agent goes away.
mod common;

use std::time::Duration;

use rbee_proto::config::NodeConfig;
use rbee_proto::session::{Event, Reply, Request, SpawnSpec};
use rbee_proto::{SamplingParams, WorkerState};
use rbee_testkit::standin::{StandIn, MODEL_REF};
use rbee_tui::dashboard::action::{Action, Effect};
use rbee_tui::dashboard::node_session::run_node;
use rbee_tui::nodes::config::NodeTarget;
use tokio::sync::mpsc;

/// Wait (bounded) for the first action `f` accepts, skipping others.
async fn next<T>(
    rx: &mut mpsc::Receiver<Action>,
    what: &str,
    f: impl Fn(&Action) -> Option<T>,
) -> T {
    common::next_action(rx, Duration::from_secs(10), what, f).await
}

fn target(agent: &StandIn, dir: &std::path::Path, token: &str) -> NodeTarget {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    NodeTarget::Remote(NodeConfig {
        name: "fake".into(),
        url: agent.url(),
        token_file,
        ..Default::default()
    })
}

fn infer(worker: &str, prompt: &str) -> Request {
    Request::Infer {
        worker: Some(worker.into()),
        model: None,
        prompt: prompt.into(),
        params: SamplingParams::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_follows_a_node_and_survives_its_restart() {
    let agent = StandIn::start("sekret").await;
    let dir = tempfile::tempdir().unwrap();
    let (atx, mut arx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(16);
    let task = tokio::spawn(run_node(0, target(&agent, dir.path(), "sekret"), atx, erx));
    connects(&mut arx).await;
    spawns_a_worker(&etx, &mut arx).await;
    streams_and_cancels_prompts(&etx, &mut arx).await;

    // The agent goes away: the session says why, refuses work meanwhile, and comes back.
    let agent = agent.restart().await;
    comes_back_after_a_restart(&etx, &mut arx).await;

    drop(etx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("session ends when the dashboard goes")
        .unwrap();
    drop(agent);
}

/// Connecting, connected (to the stand-in), the first snapshots and a latency sample.
async fn connects(arx: &mut mpsc::Receiver<Action>) {
    next(arx, "connecting", |a| {
        matches!(
            a,
            Action::Connecting {
                node: 0,
                attempt: 0
            }
        )
        .then_some(())
    })
    .await;
    let who = next(arx, "connected", |a| match a {
        Action::Connected { agent_node, .. } => Some(agent_node.clone()),
        _ => None,
    })
    .await;
    assert_eq!(who, "fake-node");
    next(arx, "model catalog", |a| {
        matches!(
            a,
            Action::Reply {
                result: Ok(Reply::Models { .. }),
                ..
            }
        )
        .then_some(())
    })
    .await;
    next(arx, "latency", |a| {
        matches!(a, Action::Latency { .. }).then_some(())
    })
    .await;
}

/// A spawn is answered, and the subscription brings the worker's states.
async fn spawns_a_worker(etx: &mpsc::Sender<Effect>, arx: &mut mpsc::Receiver<Action>) {
    let spec = SpawnSpec {
        model: MODEL_REF.into(),
        device: "cpu".into(),
        threads: None,
        ..Default::default()
    };
    etx.send(Effect::Request {
        node: 0,
        request: Request::Spawn(spec),
    })
    .await
    .unwrap();
    next(arx, "spawned", |a| {
        matches!(
            a,
            Action::Reply {
                result: Ok(Reply::Spawned { .. }),
                ..
            }
        )
        .then_some(())
    })
    .await;
    next(arx, "ready event", |a| match a {
        Action::AgentEvent {
            event: Event::WorkerState { worker },
            ..
        } if worker.state == WorkerState::Ready => Some(()),
        _ => None,
    })
    .await;
}

/// A prompt streams every token, in order, then ends; a long one stops when cancelled.
async fn streams_and_cancels_prompts(etx: &mpsc::Sender<Effect>, arx: &mut mpsc::Receiver<Action>) {
    etx.send(Effect::Infer {
        node: 0,
        prompt: 1,
        request: infer("w1", "hello big world"),
    })
    .await
    .unwrap();
    next(arx, "prompt sent", |a| {
        matches!(a, Action::PromptSent { prompt: 1, .. }).then_some(())
    })
    .await;
    let mut text = String::new();
    loop {
        let a = arx.recv().await.unwrap();
        match a {
            Action::PromptToken {
                prompt: 1, text: t, ..
            } => text.push_str(&t),
            Action::PromptDone {
                prompt: 1, result, ..
            } => {
                assert_eq!(result.unwrap().usage.generated_tokens, 4);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(text, "echo: hello big world");

    // A long prompt stops when cancelled.
    etx.send(Effect::Infer {
        node: 0,
        prompt: 2,
        request: infer("w1", "slow"),
    })
    .await
    .unwrap();
    next(arx, "first slow token", |a| {
        matches!(a, Action::PromptToken { prompt: 2, .. }).then_some(())
    })
    .await;
    etx.send(Effect::CancelInfer { node: 0, prompt: 2 })
        .await
        .unwrap();
    let err = next(arx, "cancelled", |a| match a {
        Action::PromptDone {
            prompt: 2, result, ..
        } => Some(result.clone()),
        _ => None,
    })
    .await
    .unwrap_err();
    assert!(err.contains("cancel"), "{err}");
}

/// After the agent restarted: the reason, work refused at once, then a reconnect and a fresh
/// snapshot.
async fn comes_back_after_a_restart(etx: &mpsc::Sender<Effect>, arx: &mut mpsc::Receiver<Action>) {
    let reason = next(arx, "disconnected", |a| match a {
        Action::Disconnected {
            reason,
            retry_in_ms,
            ..
        } => Some((reason.clone(), *retry_in_ms)),
        _ => None,
    })
    .await;
    // 1 s, spread by ±20 % so dashboards that lost the same agent do not redial together.
    assert!(
        (800..=1200).contains(&reason.1),
        "first retry after about 1 s: {}",
        reason.1
    );
    etx.send(Effect::Request {
        node: 0,
        request: Request::ListWorkers,
    })
    .await
    .unwrap();
    let refused = next(arx, "refusal", |a| match a {
        Action::Reply {
            request: Request::ListWorkers,
            result: Err(e),
            ..
        } => Some(e.clone()),
        _ => None,
    })
    .await;
    assert!(refused.contains("unreachable"), "{refused}");
    next(arx, "reconnected", |a| {
        matches!(a, Action::Connected { .. }).then_some(())
    })
    .await;
    let workers = next(arx, "fresh snapshot", |a| match a {
        Action::Reply {
            result: Ok(Reply::Workers { workers }),
            ..
        } => Some(workers.len()),
        _ => None,
    })
    .await;
    assert_eq!(
        workers, 1,
        "the agent's workers are listed again after the reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_unreachable_with_the_reason() {
    let agent = StandIn::start("right").await;
    let dir = tempfile::tempdir().unwrap();
    let (atx, mut arx) = mpsc::channel(64);
    let (_etx, erx) = mpsc::channel(16);
    let task = tokio::spawn(run_node(0, target(&agent, dir.path(), "wrong"), atx, erx));
    let reason = next(&mut arx, "disconnected", |a| match a {
        Action::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("refused the token"), "{reason}");
    let retry = next(&mut arx, "second failure", |a| match a {
        Action::Disconnected { retry_in_ms, .. } => Some(*retry_in_ms),
        _ => None,
    })
    .await;
    assert!(
        (1600..=2400).contains(&retry),
        "backoff doubles, ±20 %: {retry}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_unreachable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "x").unwrap();
    // Bind then drop: a port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = NodeTarget::Remote(NodeConfig {
        name: "gone".into(),
        url: format!("ws://127.0.0.1:{port}"),
        token_file,
        ..Default::default()
    });
    let (atx, mut arx) = mpsc::channel(64);
    let (_etx, erx) = mpsc::channel(16);
    let task = tokio::spawn(run_node(0, t, atx, erx));
    let reason = next(&mut arx, "disconnected", |a| match a {
        Action::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("cannot reach agent"), "{reason}");
    task.abort();
}
