//! A model that hangs while loading: the worker says hello, reports a loading stage, then never
//! gets further. Past `[load_timeout]` the agent kills it and reports it failed with the reason,
//! once (a load that hung is not retried), instead of leaving it loading forever.
use std::time::Duration;

use rbee_client::Incoming;
use rbee_proto::session::{Event, Reply, Request, SpawnSpec};
use rbee_proto::WorkerState;
use rbee_testkit::{alive, hangs_while_loading, model_path, AgentProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_loading_is_killed_and_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let script = hangs_while_loading(dir.path());
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[load_timeout]\nbase_secs = 1\nper_gib_secs = 0\n").unwrap();
    let agent = AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.path().join("state"),
        &script,
        &["--config", conf.to_str().unwrap()],
        &[],
    );
    let (c, mut ev) = agent.subscribed().await;
    let spec = SpawnSpec {
        model: model_path().display().to_string(),
        ..Default::default()
    };
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!("spawn")
    };
    // States as they come: it loads, then fails; nothing else (no restart) in between.
    let mut seen = Vec::new();
    let mut pid = None;
    let failed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ev.recv().await {
                Some(Incoming::Event(Event::WorkerState { worker: w })) if w.id == worker.id => {
                    seen.push(w.state);
                    pid = w.pid.or(pid);
                    if w.state == WorkerState::Failed {
                        return w;
                    }
                }
                Some(_) => {}
                None => panic!("session ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not failed within 30 s; states {seen:?}"));
    assert!(seen.contains(&WorkerState::Loading), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, WorkerState::BackingOff | WorkerState::Crashed)),
        "a hung load is not retried: {seen:?}"
    );
    assert!(
        failed
            .detail
            .starts_with("load timed out: still loading after"),
        "{}",
        failed.detail
    );
    assert_eq!(failed.restarts, 0);
    let pid = pid.expect("the stand-in had a pid");
    assert!(!alive(pid), "the hung worker was killed");
    let audit = agent.audit();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("load_failed") && l.contains("load timed out")),
        "{audit}"
    );
}
