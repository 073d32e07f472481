//! Hostile and careless clients against the real agent (issue 18): each test reproduces an
//! attack that used to hurt it and checks that the agent stays bounded and a legitimate client
//! is still served.
mod common;

use std::time::{Duration, Instant};

use common::{bounded, fd_count, http_get, idle_worker, metric, rss_bytes, script, start_agent};
use futures_util::{SinkExt, StreamExt};
use rbee_client::{Client, ClientError};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientMsg, Reply, Request, ServerMsg, SpawnSpec, WorkerInfo};
use rbee_proto::{ErrorCode, WorkerState, PROTOCOL_VERSION};
use rbee_testkit::{bin, model_path, wait_for, AgentProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn addr(agent: &AgentProc) -> String {
    agent.url.trim_start_matches("ws://").to_string()
}

/// A new session answers `ping` and `list_workers`.
async fn serves(agent: &AgentProc) -> Vec<WorkerInfo> {
    let (c, _ev) = bounded("connect", agent.connect()).await;
    let pong = bounded("ping", c.request(Request::Ping, None)).await;
    assert!(matches!(pong, Ok(Reply::Pong { .. })), "{pong:?}");
    match bounded("list", c.request(Request::ListWorkers, None)).await {
        Ok(Reply::Workers { workers }) => workers,
        other => panic!("{other:?}"),
    }
}

/// `n` connections from `tasks` tasks, each sending `first` and closing.
async fn burst(addr: &str, n: usize, tasks: usize, first: &'static [u8]) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let addr = addr.to_string();
        let mine = n / tasks + usize::from(t < n % tasks);
        set.spawn(async move {
            for _ in 0..mine {
                if let Ok(mut s) = TcpStream::connect(&addr).await {
                    let _ = s.write_all(first).await;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_connections_under_a_low_descriptor_limit_leave_the_agent_serving() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = ["prlimit", "--nofile=256:256", "--"];
    let agent = start_agent(&prefix, &dir.path().join("state"), &bin("rbee-worker"), &[]);
    let pid = agent.pid();
    serves(&agent).await;
    let baseline = fd_count(pid);

    // Many times the descriptor limit in connections that send one byte and close.
    bounded("burst", burst(&addr(&agent), 2000, 32, b"G")).await;
    serves(&agent).await;

    // Slow senders: a byte each, then nothing, held open; more than the pending limit.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr(&agent)).await.unwrap();
        s.write_all(b"G").await.unwrap();
        slow.push(s);
    }
    let fds = fd_count(pid);
    assert!(fds < 256, "agent holds {fds} descriptors");
    serves(&agent).await;

    drop(slow);
    wait_for(
        Duration::from_secs(20),
        "descriptors back to baseline",
        || (fd_count(pid) <= baseline + 4).then_some(()),
    );
    let m = http_get(&agent, "/metrics").await;
    let evicted = metric(&m, "rbee_connections_dropped_total{reason=\"evicted\"}");
    assert!(evicted >= 200, "evictions: {evicted}\n{m}");
    let log = agent.log();
    assert!(!log.contains("Too many open files"), "{log}");
}

#[tokio::test]
async fn an_endless_head_gets_431_and_a_slow_sender_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    // 9 KiB of header and no blank line.
    let mut s = TcpStream::connect(addr(&agent)).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 9 << 10));
    let _ = s.write_all(&head).await;
    let mut answer = Vec::new();
    let _ = bounded("431", s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // One byte every 200 ms: the agent closes it at its handshake deadline.
    let s = TcpStream::connect(addr(&agent)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut buf = [0u8; 64];
    let closed = async { rd.read(&mut buf).await };
    tokio::select! {
        _ = trickle => {}
        r = bounded("slow sender closed", closed) => assert!(matches!(r, Ok(0) | Err(_)), "{r:?}"),
    }
    // The count follows the close on the agent's side; give it a moment under a busy machine.
    let dropped = |m: &str, reason: &str| {
        metric(
            m,
            &format!("rbee_connections_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let mut m = http_get(&agent, "/metrics").await;
    for _ in 0..50 {
        if dropped(&m, "handshake_timeout") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = http_get(&agent, "/metrics").await;
    }
    assert_eq!(dropped(&m, "head_too_large"), 1, "{m}");
    assert_eq!(dropped(&m, "handshake_timeout"), 1, "{m}");
    serves(&agent).await;
}

/// One WebSocket upgrade with a wrong token; the HTTP answer.
async fn wrong_login(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer guess\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_flood_is_counted_but_rate_limited_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    let n = 3000;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let addr = addr(&agent);
        set.spawn(async move {
            for _ in 0..n / 30 {
                let a = wrong_login(&addr).await;
                assert!(a.starts_with("HTTP/1.1 401"), "{a}");
            }
        });
    }
    while let Some(r) = bounded("flood", set.join_next()).await {
        r.unwrap();
    }
    // One more after a pause: it is written, telling how many were not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(wrong_login(&addr(&agent)).await.starts_with("HTTP/1.1 401"));
    let secs = started.elapsed().as_secs();

    let audit = agent.audit();
    let lines = audit.matches("\"auth_failed\"").count() as u64;
    assert!(
        (20..=20 + secs + 2).contains(&lines),
        "{lines} audit lines for {n} failures in {secs} s"
    );
    assert!(audit.contains("more like this not logged"), "{audit}");
    let logged = agent.log().matches("auth_failed").count() as u64;
    assert!(logged <= 20 + secs + 2, "{logged} log lines");
    let m = http_get(&agent, "/metrics").await;
    assert_eq!(
        metric(&m, "rbee_errors_total{kind=\"unauthorized\"}"),
        n as u64 + 1,
        "every failure is counted"
    );
    serves(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    let pid = agent.pid();
    serves(&agent).await;
    let before = rss_bytes(pid);

    let mut req = agent.url.as_str().into_client_request().unwrap();
    let bearer = format!("Bearer {}", agent.token);
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let hello = ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "never-reads".into(),
        identity: None,
    };
    sink.send(Message::text(encode(&hello))).await.unwrap();
    let Some(Ok(Message::Text(w))) = stream.next().await else {
        panic!("no welcome")
    };
    assert!(matches!(
        decode::<ServerMsg>(&w),
        Ok(ServerMsg::Welcome { .. })
    ));
    // `status` answers are the largest; send until the agent stops taking them.
    let total = 300_000u64;
    let mut sent = 0u64;
    while sent < total {
        let frame = encode(&ClientMsg::Request {
            id: sent + 1,
            deadline: None,
            timeout_ms: None,
            body: Request::Status,
        });
        match tokio::time::timeout(Duration::from_secs(2), sink.send(Message::text(frame))).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    let during = rss_bytes(pid);
    let mb = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "never-reading client: {sent} requests taken; agent RSS {:.1} → {:.1} MiB",
        mb(before),
        mb(during)
    );
    assert!(
        sent < total,
        "the agent kept reading a client that never reads"
    );
    assert!(
        during < before + (64 << 20),
        "agent RSS grew {:.1} → {:.1} MiB",
        mb(before),
        mb(during)
    );
    serves(&agent).await;
    drop((sink, stream));
    wait_for(Duration::from_secs(20), "memory to come back", || {
        (rss_bytes(pid) < before + (32 << 20)).then_some(())
    });
}

fn mem_available() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_spawns_are_admitted_against_memory_promised_to_starting_workers() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // A sparse "model" of an eighth of free memory (no disk used; the stand-in never loads it),
    // and a floor that leaves room for three and a half of them.
    let avail = mem_available();
    let unit = avail / 8;
    let model = models.join("big.gguf");
    std::fs::File::create(&model)
        .unwrap()
        .set_len(unit)
        .unwrap();
    let cfg = dir.path().join("agent.toml");
    let floor = avail - unit * 7 / 2;
    std::fs::write(&cfg, format!("admission_headroom_bytes = {floor}\n")).unwrap();
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--model-dir",
        models.to_str().unwrap(),
    ];
    let agent = start_agent(
        &[],
        &dir.path().join("state"),
        &idle_worker(dir.path()),
        &args,
    );
    let (c, _ev) = agent.connect().await;
    let spec = SpawnSpec {
        model: model.display().to_string(),
        device: "cpu".into(),
        threads: None,
        ..Default::default()
    };
    let spawns = (0..15).map(|_| c.request(Request::Spawn(spec.clone()), None));
    let results = bounded("15 spawns", futures_util::future::join_all(spawns)).await;
    let mut admitted = Vec::new();
    for r in results {
        match r {
            Ok(Reply::Spawned { worker }) => admitted.push(worker.id),
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::InsufficientMemory, "{}", e.message);
                assert!(e.message.contains("still starting"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }
    // Room for three; free memory moves with the rest of the machine, hence the slack. Without
    // promises all fifteen were admitted.
    assert!(
        (1..=5).contains(&admitted.len()),
        "{} of 15 admitted against room for 3",
        admitted.len()
    );
    // Killing them gives their promises back.
    for w in &admitted {
        c.request(Request::Kill { worker: w.clone() }, None)
            .await
            .unwrap();
    }
    let again = c.request(Request::Spawn(spec), None).await;
    assert!(matches!(again, Ok(Reply::Spawned { .. })), "{again:?}");
}

/// Wait until worker `id` is in a state `pred` accepts (polling `list_workers`).
async fn until_worker(c: &Client, id: &str, pred: impl Fn(&WorkerInfo) -> bool) -> WorkerInfo {
    bounded("worker state", async {
        loop {
            if let Ok(Reply::Workers { workers }) = c.request(Request::ListWorkers, None).await {
                if let Some(w) = workers.into_iter().find(|w| w.id == id && pred(w)) {
                    return w;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_worker_of_another_protocol_fails_once_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    // What a worker of a later release answers: its own hello, then the refusal, exit 0.
    let worker = script(
        dir.path(),
        "other-version-worker",
        "echo '{\"type\":\"hello\",\"protocol_version\":999,\"pid\":1}'\n\
         echo '{\"type\":\"error\",\"code\":\"version_mismatch\",\"message\":\"agent speaks protocol 2, worker speaks 999\"}'\n\
         exit 0",
    );
    let agent = start_agent(&[], &dir.path().join("state"), &worker, &[]);
    let (c, _ev) = agent.connect().await;
    let spec = SpawnSpec {
        model: model_path().display().to_string(),
        device: "cpu".into(),
        threads: Some(1),
        ..Default::default()
    };
    let Ok(Reply::Spawned { worker }) = c.request(Request::Spawn(spec), None).await else {
        panic!()
    };
    let failed = until_worker(&c, &worker.id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(
        failed.detail,
        format!("incompatible worker: worker speaks protocol 999, agent speaks {PROTOCOL_VERSION}")
    );
    assert_eq!(failed.restarts, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audit = agent.audit();
    assert_eq!(audit.matches("\"load_failed\"").count(), 1, "{audit}");
    assert!(!audit.contains("\"auto_restart\""), "{audit}");
}

#[tokio::test]
async fn threads_beyond_the_nodes_cpus_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("state"), &[]);
    let (c, _ev) = agent.connect().await;
    for threads in [0, 1_000_000_000] {
        let spec = SpawnSpec {
            model: model_path().display().to_string(),
            device: "cpu".into(),
            threads: Some(threads),
            ..Default::default()
        };
        let Err(ClientError::Agent(e)) = c.request(Request::Spawn(spec), None).await else {
            panic!("threads = {threads} must be refused")
        };
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message.starts_with(&format!(
                "threads = {threads} is out of range: this node has "
            )),
            "{}",
            e.message
        );
    }
    assert!(serves(&agent).await.is_empty(), "nothing was spawned");
}
