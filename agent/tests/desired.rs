//! The desired state under concurrent changes, crashes and a full disk (issue 18, items 2 and
//! 5), against the real agent with a stand-in worker that only sleeps (spawn and kill cost no
//! model load).
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, idle_worker, start_agent};
use rbee_client::{Client, ClientError};
use rbee_proto::session::{Reply, Request, SpawnSpec};
use rbee_proto::ErrorCode;
use rbee_testkit::{model_path, AgentProc};

fn spec() -> SpawnSpec {
    SpawnSpec {
        model: model_path().display().to_string(),
        device: "cpu".into(),
        threads: None,
        ..Default::default()
    }
}

async fn listed(c: &Client) -> BTreeSet<String> {
    match bounded("list", c.request(Request::ListWorkers, None)).await {
        Ok(Reply::Workers { workers }) => workers.into_iter().map(|w| w.id).collect(),
        other => panic!("{other:?}"),
    }
}

/// The worker ids in `desired.json` (which must parse).
fn desired_ids(state: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(state.join("desired.json")).unwrap_or_default();
    if text.is_empty() {
        return BTreeSet::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect()
}

/// What the churning sessions were told, and what was still in flight when the agent died.
#[derive(Default, Debug)]
struct Ledger {
    /// Spawn answered, no kill answered.
    alive: BTreeSet<String>,
    /// Kill answered.
    killed: BTreeSet<String>,
    /// Kill sent, never answered.
    killing: BTreeSet<String>,
    /// Spawns sent, never answered.
    spawning: usize,
}

/// Tiny deterministic generator, so a failing run can be replayed.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One session spawning and killing its own workers until `stop` or until the agent is gone.
async fn churn(
    agent_url: String,
    token: String,
    ledger: Arc<Mutex<Ledger>>,
    mut mine: Vec<String>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let Ok((c, _ev)) = Client::connect(&agent_url, &token, "churn").await else {
        return;
    };
    let mut rng = XorShift(seed);
    while !stop.load(Ordering::Relaxed) {
        if mine.is_empty() || (mine.len() < 4 && rng.below(2) == 0) {
            ledger.lock().unwrap().spawning += 1;
            let Ok(Reply::Spawned { worker }) = c.request(Request::Spawn(spec()), None).await
            else {
                return;
            };
            let mut l = ledger.lock().unwrap();
            l.spawning -= 1;
            l.alive.insert(worker.id.clone());
            mine.push(worker.id);
        } else {
            let id = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            ledger.lock().unwrap().killing.insert(id.clone());
            let kill = Request::Kill { worker: id.clone() };
            if c.request(kill, None).await.is_err() {
                return;
            }
            let mut l = ledger.lock().unwrap();
            l.killing.remove(&id);
            l.alive.remove(&id);
            l.killed.insert(id);
        }
    }
}

/// Reads `desired.json` over and over until `stop`; counts reads and reads that do not parse.
fn watch(
    state: PathBuf,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    torn: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(text) = std::fs::read_to_string(state.join("desired.json")) {
            reads.fetch_add(1, Ordering::Relaxed);
            if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                torn.lock().unwrap().push(text);
            }
        }
    }
}

/// After a crash: what was answered is kept, what was killed stays dead, and nothing else
/// appears beyond the spawns that were in flight.
fn check_after_crash(l: &Ledger, restored: &BTreeSet<String>) {
    let must: BTreeSet<_> = l.alive.difference(&l.killing).cloned().collect();
    assert!(
        must.is_subset(restored),
        "lost workers: {:?}",
        must.difference(restored)
    );
    assert!(
        restored.is_disjoint(&l.killed),
        "killed workers came back: {:?}",
        restored.intersection(&l.killed)
    );
    let allowed: BTreeSet<_> = l.alive.union(&l.killing).cloned().collect();
    let extra = restored.difference(&allowed).count();
    assert!(
        extra <= l.spawning,
        "{extra} unknown workers restored; {l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_sessions_and_kill_9_never_tear_lose_or_resurrect_desired_workers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let worker = idle_worker(dir.path());
    let (stop_watch, reads, torn) = (
        Arc::new(AtomicBool::new(false)),
        Arc::default(),
        Arc::default(),
    );
    let watcher = {
        let (state, stop, reads, torn) = (
            state.clone(),
            stop_watch.clone(),
            Arc::clone(&reads),
            Arc::clone(&torn),
        );
        std::thread::spawn(move || watch(state, stop, reads, torn))
    };
    let mut rng = XorShift(0x5EED_1234_ABCD_0001);
    let mut expected = BTreeSet::new();
    let rounds = 6;
    for round in 0..rounds {
        let mut agent = start_agent(&[], &state, &worker, &[]);
        let (c, _ev) = agent.connect().await;
        assert_eq!(
            listed(&c).await,
            expected,
            "round {round}: restored workers"
        );
        let ledger = Arc::new(Mutex::new(Ledger {
            alive: expected.clone(),
            ..Ledger::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut shares: Vec<Vec<String>> = vec![Vec::new(); 4];
        for (i, id) in expected.iter().enumerate() {
            shares[i % 4].push(id.clone());
        }
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|mine| {
                let seed = rng.below(u64::MAX) | 1;
                let (url, token) = (agent.url.clone(), agent.token.clone());
                tokio::spawn(churn(url, token, ledger.clone(), mine, seed, stop.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        if round + 1 < rounds {
            agent.signal_and_wait(libc::SIGKILL);
            for t in tasks {
                bounded("churn ends with the agent", t).await.unwrap();
            }
            let restored = desired_ids(&state);
            check_after_crash(&ledger.lock().unwrap(), &restored);
            expected = restored;
        } else {
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                bounded("churn stops", t).await.unwrap();
            }
            let l = std::mem::take(&mut *ledger.lock().unwrap());
            assert_eq!(listed(&c).await, l.alive, "the agent has what it answered");
            assert_eq!(
                desired_ids(&state),
                l.alive,
                "desired.json has it too, no more"
            );
            println!(
                "last round: {} alive, {} killed",
                l.alive.len(),
                l.killed.len()
            );
        }
    }
    stop_watch.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let torn = torn.lock().unwrap();
    let reads = reads.load(Ordering::Relaxed);
    println!(
        "watcher: {reads} reads of desired.json, {} torn",
        torn.len()
    );
    assert!(reads > 100, "the watcher read {reads} times");
    assert!(
        torn.is_empty(),
        "{} torn reads, first: {:?}",
        torn.len(),
        torn.first()
    );
}

/// Unmounts on drop (after the agent using it is gone).
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A small tmpfs at `dir`, or why there cannot be one here.
fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mounted, String> {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(Mounted(dir.into()))
}

/// Fill the filesystem holding `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = [0u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
    path
}

fn agent_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> rbee_proto::ProtoError {
    match r {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_to_the_caller_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _mount = match mount_tmpfs(&state, "256k") {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: no tmpfs can be mounted here ({why})");
            return;
        }
    };
    let worker = idle_worker(dir.path());
    let mut agent: AgentProc = start_agent(&[], &state, &worker, &[]);
    let (c, _ev) = agent.connect().await;
    let Ok(Reply::Spawned { worker: w1 }) = c.request(Request::Spawn(spec()), None).await else {
        panic!()
    };

    let filler = fill(&state);
    let e = agent_error(c.request(Request::Spawn(spec()), None).await);
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(
        e.message.starts_with("cannot save the desired state: "),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("No space left on device"),
        "{}",
        e.message
    );
    assert!(
        e.message.ends_with("; the worker was not started"),
        "{}",
        e.message
    );
    let kill = || Request::Kill {
        worker: w1.id.clone(),
    };
    let e = agent_error(c.request(kill(), None).await);
    assert!(
        e.message.ends_with("; the worker was left running"),
        "{}",
        e.message
    );
    assert_eq!(listed(&c).await, BTreeSet::from([w1.id.clone()]));

    std::fs::remove_file(filler).unwrap();
    c.request(kill(), None).await.unwrap();
    let Ok(Reply::Spawned { worker: w2 }) = c.request(Request::Spawn(spec()), None).await else {
        panic!()
    };
    drop(c);
    agent.signal_and_wait(libc::SIGTERM);
    let agent = start_agent(&[], &state, &worker, &[]);
    let (c, _ev) = agent.connect().await;
    assert_eq!(
        listed(&c).await,
        BTreeSet::from([w2.id]),
        "after a restart: what was answered"
    );
}
