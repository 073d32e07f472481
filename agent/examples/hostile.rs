//! Hostile-load benchmark (issue 18): a legitimate client's `list_workers` latency and the
//! agent's RSS, CPU, descriptors and audit-log growth before, during and after a hostile load of
//! partial connections, slow senders, a login flood and a client that never reads.
//!
//! ```text
//! cargo build --release -p rbee-agent --example hostile
//! target/release/examples/hostile [SECONDS_OF_HOSTILE_LOAD=60] [QUIET_SECONDS=10]
//! ```
//! It runs `rbee-agent` from the same target directory (`target/release` or `target/debug`).
//! Prints a markdown table.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rbee_client::Client;
use rbee_proto::frame::encode;
use rbee_proto::session::{ClientMsg, Reply, Request};
use rbee_proto::PROTOCOL_VERSION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A running agent: pid, address, token, state dir.
struct Agent {
    child: std::process::Child,
    addr: String,
    token: String,
    state: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(dir: &Path) -> Agent {
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .to_path_buf();
    let state = dir.join("state");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = std::process::Command::new(bin_dir.join("rbee-agent"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        // No worker is spawned; the agent only checks that the binary exists.
        .args(["--worker-bin", "/bin/true"])
        .env("RBEE_LOG", "info")
        .stderr(log)
        .spawn()
        .expect("rbee-agent next to this example (cargo build -p rbee-agent)");
    let t0 = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(state.join("agent.addr")) {
            if !a.is_empty() {
                break a;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let token = std::fs::read_to_string(state.join("token"))
        .unwrap()
        .trim()
        .to_string();
    Agent {
        child,
        addr,
        token,
        state,
    }
}

/// One reading of the agent from /proc and its state dir.
#[derive(Clone, Copy, Default)]
struct Sample {
    rss: u64,
    cpu_ticks: u64,
    fds: usize,
    audit_bytes: u64,
}

fn sample(agent: &Agent) -> Sample {
    let pid = agent.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Sample {
        rss,
        cpu_ticks: tick(11) + tick(12),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        audit_bytes: std::fs::metadata(agent.state.join("audit.jsonl")).map_or(0, |m| m.len()),
    }
}

/// Latencies of one phase, in microseconds, and the failures.
#[derive(Default)]
struct Phase {
    lat_us: Vec<u64>,
    errors: u64,
}

/// The legitimate client: `list_workers` every 20 ms on its own thread and runtime; each
/// latency goes to the phase that is current.
fn legit_client(
    addr: String,
    token: String,
    phases: Arc<Mutex<Vec<Phase>>>,
    stop: Arc<AtomicBool>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = format!("ws://{addr}");
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client = Client::connect(&url, &token, "legit")
                    .await
                    .ok()
                    .map(|(c, _ev)| c);
            }
            let t = Instant::now();
            let ok = match &client {
                Some(c) => matches!(
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        c.request(Request::ListWorkers, None)
                    )
                    .await,
                    Ok(Ok(Reply::Workers { .. }))
                ),
                None => false,
            };
            let us = t.elapsed().as_micros() as u64;
            {
                let mut p = phases.lock().unwrap();
                let cur = p.last_mut().unwrap();
                if ok {
                    cur.lat_us.push(us);
                } else {
                    cur.errors += 1;
                    client = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Connections that send one byte and close, as fast as one task can.
async fn partial_connections(addr: String, stop: Arc<AtomicBool>, n: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(&addr).await {
            let _ = s.write_all(b"G").await;
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// 200 slow senders, one byte a second each, reopened when the agent closes them.
async fn slow_senders(addr: String, stop: Arc<AtomicBool>) {
    let mut conns: Vec<Option<TcpStream>> = (0..200).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            if c.is_none() {
                *c = TcpStream::connect(&addr).await.ok();
            }
            if let Some(s) = c {
                if s.write_all(b"G").await.is_err() {
                    *c = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Upgrades with a wrong token, back to back.
async fn login_flood(addr: String, stop: Arc<AtomicBool>, n: Arc<AtomicU64>) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer guess\r\n\r\n"
    );
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(&addr).await {
            let _ = s.write_all(req.as_bytes()).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A session that sends `status` requests and never reads; reconnects when closed.
async fn never_reads(addr: String, token: String, stop: Arc<AtomicBool>, n: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let mut req = format!("ws://{addr}").into_client_request().unwrap();
        let bearer = format!("Bearer {token}");
        req.headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        let Ok((ws, _)) = tokio_tungstenite::connect_async(req).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, _unread) = ws.split();
        let hello = ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "never-reads".into(),
            identity: None,
        };
        let _ = sink.send(Message::text(encode(&hello))).await;
        let mut id = 0;
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let frame = encode(&ClientMsg::Request {
                id,
                deadline: None,
                timeout_ms: None,
                body: Request::Status,
            });
            match tokio::time::timeout(Duration::from_secs(1), sink.send(Message::text(frame)))
                .await
            {
                Ok(Ok(())) => {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(_)) => break,
                Err(_) => {} // pushed back: keep trying without reading
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// One line of the table: the phase's latencies and the agent's figures (start, end, peak).
fn row(name: &str, secs: u64, cur: &Phase, [s0, s1, peak]: [Sample; 3], wall: f64) -> String {
    const USER_HZ: f64 = 100.0;
    let cpu = (s1.cpu_ticks - s0.cpu_ticks) as f64 / USER_HZ / wall * 100.0;
    let mib = |b: u64| b as f64 / 1048576.0;
    format!(
        "| {name} | {secs} s | {} | {:.2} | {:.2} | {:.2} | {} | {:.1} → {:.1} (peak {:.1}) | {:.1} | {} → {} (peak {}) | +{} |",
        cur.lat_us.len(),
        percentile(&cur.lat_us, 0.5),
        percentile(&cur.lat_us, 0.99),
        cur.lat_us.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        cur.errors,
        mib(s0.rss),
        mib(s1.rss),
        mib(peak.rss),
        cpu,
        s0.fds,
        s1.fds,
        peak.fds,
        s1.audit_bytes - s0.audit_bytes,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hostile_secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let quiet_secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path());
    let phases = Arc::new(Mutex::new(vec![Phase::default()]));
    let stop_legit = Arc::new(AtomicBool::new(false));
    let legit = {
        let (a, t, p, s) = (
            agent.addr.clone(),
            agent.token.clone(),
            phases.clone(),
            stop_legit.clone(),
        );
        std::thread::spawn(move || legit_client(a, t, p, s))
    };
    let mut rows = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counts: [Arc<AtomicU64>; 3] = Default::default();
    for (name, secs, hostile) in [
        ("before", quiet_secs, false),
        ("during", hostile_secs, true),
        ("after", quiet_secs, false),
    ] {
        if name != "before" {
            phases.lock().unwrap().push(Phase::default());
        }
        let s0 = sample(&agent);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        if hostile {
            let a = || agent.addr.clone();
            for _ in 0..2 {
                tasks.push(rt.spawn(partial_connections(a(), stop.clone(), counts[0].clone())));
            }
            tasks.push(rt.spawn(slow_senders(a(), stop.clone())));
            for _ in 0..4 {
                tasks.push(rt.spawn(login_flood(a(), stop.clone(), counts[1].clone())));
            }
            tasks.push(rt.spawn(never_reads(
                a(),
                agent.token.clone(),
                stop.clone(),
                counts[2].clone(),
            )));
        }
        let mut peak = s0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(500));
            let s = sample(&agent);
            peak.rss = peak.rss.max(s.rss);
            peak.fds = peak.fds.max(s.fds);
        }
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
        });
        let s1 = sample(&agent);
        let mut p = phases.lock().unwrap();
        let cur = p.last_mut().unwrap();
        cur.lat_us.sort_unstable();
        rows.push(row(
            name,
            secs,
            cur,
            [s0, s1, peak],
            t0.elapsed().as_secs_f64(),
        ));
    }
    stop_legit.store(true, Ordering::Relaxed);
    legit.join().unwrap();
    println!("| phase | length | list_workers answered | p50 ms | p99 ms | max ms | failed | agent RSS MiB | agent CPU % of a core | descriptors | audit bytes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\nhostile load: {} partial connections, {} failed logins, {} requests from the client that never reads; 200 slow senders held",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed)
    );
}
