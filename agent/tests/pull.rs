//! `hf:` model pulls through the real agent. No model hub is reachable from here, so the test
//! serves the hub's file protocol itself on loopback (repository info with blob sizes, `resolve`
//! URLs with ranges, the commit and etag headers) and points the agent at it with `HF_ENDPOINT`,
//! the variable every HF client honours. Everything from there on is the real code: hf-hub's
//! download into a real cache, progress events, the disk check, then a real worker loading the
//! pulled file through its `hf:` reference.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbee_client::{Client, ClientError, Incoming};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec};
use rbee_proto::{ErrorCode, SamplingParams, WorkerState};
use rbee_testkit::{model_path, AgentProc};
use tokio::sync::mpsc;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A file the hub serves: its real bytes, or only an advertised size.
enum Blob {
    Bytes(Arc<Vec<u8>>),
    Advertised(u64),
}

struct Hub {
    url: String,
    /// Bytes sent in file bodies, to prove what was (not) downloaded.
    served: Arc<AtomicU64>,
}

fn start_hub(files: Vec<(&'static str, &'static str, Blob)>) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let files = Arc::new(files);
    let counter = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (files, counter) = (files.clone(), counter.clone());
            std::thread::spawn(move || {
                let _ = serve(conn, &files, &counter);
            });
        }
    });
    Hub { url, served }
}

fn serve(
    mut conn: TcpStream,
    files: &[(&str, &str, Blob)],
    served: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().ok()));
        }
    }
    let size = |b: &Blob| match b {
        Blob::Bytes(v) => v.len() as u64,
        Blob::Advertised(n) => *n,
    };
    let path = path.split('?').next().unwrap();
    if let Some(repo) = path
        .strip_prefix("/api/models/")
        .and_then(|p| p.split("/revision/").next())
    {
        let siblings: Vec<String> = files
            .iter()
            .filter(|(r, _, _)| *r == repo)
            .map(|(_, name, b)| format!(r#"{{"rfilename":"{name}","size":{}}}"#, size(b)))
            .collect();
        if siblings.is_empty() {
            return respond(
                &mut conn,
                "404 Not Found",
                &[],
                b"{\"error\":\"Repository not found\"}",
            );
        }
        let body = format!(
            r#"{{"sha":"{COMMIT}","siblings":[{}]}}"#,
            siblings.join(",")
        );
        return respond(
            &mut conn,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    let found = files
        .iter()
        .find(|(r, name, _)| path == format!("/{r}/resolve/main/{name}"));
    let Some((_, name, blob)) = found else {
        return respond(&mut conn, "404 Not Found", &[], b"not found");
    };
    let total = size(blob);
    let (start, end) = match range {
        Some((a, Some(b))) => (a, b.min(total - 1)),
        Some((a, None)) => (a, total - 1),
        None => (0, total - 1),
    };
    let headers = [
        ("ETag", format!("\"etag-{name}\"")),
        ("X-Repo-Commit", COMMIT.to_string()),
        ("Content-Range", format!("bytes {start}-{end}/{total}")),
    ];
    let body: Vec<u8> = match blob {
        Blob::Bytes(v) => v[start as usize..=end as usize].to_vec(),
        Blob::Advertised(_) if end - start < 16 => vec![0; (end - start + 1) as usize],
        Blob::Advertised(_) => {
            return respond(
                &mut conn,
                "500 Internal Server Error",
                &[],
                b"never downloaded",
            )
        }
    };
    if end > start {
        served.fetch_add(body.len() as u64, Ordering::SeqCst);
    }
    respond(&mut conn, "206 Partial Content", &headers, &body)
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    // Write in pieces so the client sees the download progress.
    for chunk in body.chunks(1 << 20) {
        conn.write_all(chunk)?;
    }
    conn.flush()
}

fn agent_on(hub: &Hub, hf_home: &std::path::Path, state: &std::path::Path) -> AgentProc {
    AgentProc::start_with_env(
        state,
        &[],
        &[
            ("HF_ENDPOINT", hub.url.as_str()),
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "0"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_downloads_with_progress_then_a_worker_serves_the_hf_reference() {
    let bytes = Arc::new(std::fs::read(model_path()).unwrap());
    let hub = start_hub(vec![("test-org/smol", GGUF, Blob::Bytes(bytes.clone()))]);
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let agent = agent_on(&hub, &hf_home, &dir.path().join("state"));
    let (c, mut ev) = agent.subscribed().await;
    let reference = format!("hf:test-org/smol:{GGUF}");

    // Not pulled yet: the catalog does not offer it.
    let Reply::Models { models } = c.request(Request::ListModels, None).await.unwrap() else {
        panic!()
    };
    assert!(
        models.iter().all(|m| m.reference != reference),
        "{models:?}"
    );

    let reply = c
        .request(
            Request::Pull {
                model: reference.clone(),
            },
            None,
        )
        .await
        .unwrap();
    let Reply::Pulled {
        model,
        path,
        downloaded_bytes,
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(model, reference);
    assert_eq!(downloaded_bytes, bytes.len() as u64);
    assert!(path.starts_with(hf_home.to_str().unwrap()), "{path}");
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        bytes.len(),
        "the cached file is the whole model"
    );

    progress_was_reported(&mut ev, &reference, bytes.len() as u64).await;
    second_pull_downloads_nothing(&c, &hub, &reference, bytes.len() as u64).await;
    a_worker_serves(&c, &mut ev, &reference).await;

    let audit = std::fs::read_to_string(agent.state_dir.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"pulled\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_that_does_not_fit_on_disk_is_refused_before_any_byte() {
    let hub = start_hub(vec![(
        "test-org/huge",
        "huge.gguf",
        Blob::Advertised(1 << 60),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let agent = agent_on(&hub, &hf_home, &dir.path().join("state"));
    let (c, _ev) = agent.subscribed().await;

    let e = c
        .request(
            Request::Pull {
                model: "hf:test-org/huge:huge.gguf".into(),
            },
            None,
        )
        .await
        .unwrap_err();
    let ClientError::Agent(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, ErrorCode::InsufficientDisk);
    assert!(
        e.message
            .starts_with("hf:test-org/huge:huge.gguf needs 1048576 TiB to download but only "),
        "{}",
        e.message
    );
    assert!(e.message.contains("free in"), "{}", e.message);
    assert_eq!(hub.served.load(Ordering::SeqCst), 0, "nothing downloaded");

    // Unknown repo and unknown file: NotFound naming them. The agent keeps serving.
    let e = c
        .request(
            Request::Pull {
                model: "hf:test-org/nothing:x.gguf".into(),
            },
            None,
        )
        .await
        .unwrap_err();
    let ClientError::Agent(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    assert!(e.message.contains("test-org/nothing"), "{}", e.message);
    let e = c
        .request(
            Request::Pull {
                model: "hf:test-org/huge:other.gguf".into(),
            },
            None,
        )
        .await
        .unwrap_err();
    let ClientError::Agent(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("no file `other.gguf`"), "{}", e.message);
    let e = c
        .request(
            Request::Pull {
                model: "hf:bad".into(),
            },
            None,
        )
        .await
        .unwrap_err();
    let ClientError::Agent(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(matches!(
        c.request(Request::Ping, None).await.unwrap(),
        Reply::Pong { .. }
    ));
}

/// Progress arrived as events, monotonic, ending at the total.
async fn progress_was_reported(ev: &mut mpsc::Receiver<Incoming>, reference: &str, total: u64) {
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), ev.recv()).await {
        if let Incoming::Event(Event::PullProgress {
            model,
            downloaded_bytes,
            total_bytes,
            ..
        }) = m
        {
            assert_eq!(model, reference);
            assert_eq!(total_bytes, total);
            seen.push(downloaded_bytes);
        }
    }
    assert!(seen.len() >= 2, "progress events: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert_eq!(*seen.last().unwrap(), total);
}

/// Now it is in the catalog, and a second pull downloads nothing.
async fn second_pull_downloads_nothing(c: &Client, hub: &Hub, reference: &str, total: u64) {
    let Reply::Models { models } = c.request(Request::ListModels, None).await.unwrap() else {
        panic!()
    };
    let entry = models
        .iter()
        .find(|m| m.reference == reference)
        .unwrap_or_else(|| panic!("{models:?}"));
    assert_eq!((entry.format.as_str(), entry.size_bytes), ("gguf", total));
    let before = hub.served.load(Ordering::SeqCst);
    let Reply::Pulled {
        downloaded_bytes, ..
    } = c
        .request(
            Request::Pull {
                model: reference.to_string(),
            },
            None,
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(downloaded_bytes, 0);
    assert_eq!(hub.served.load(Ordering::SeqCst), before);
}

/// A worker spawned on the hf: reference loads it from the cache and generates.
async fn a_worker_serves(c: &Client, ev: &mut mpsc::Receiver<Incoming>, reference: &str) {
    let spec = SpawnSpec {
        model: reference.to_string(),
        device: "cpu".into(),
        threads: Some(1),
        ..Default::default()
    };
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!()
    };
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match ev.recv().await {
                Some(Incoming::Event(Event::WorkerState { worker: w })) if w.id == worker.id => {
                    assert_ne!(w.state, WorkerState::Failed, "{w:?}");
                    if w.state == WorkerState::Ready {
                        return w;
                    }
                }
                Some(_) => {}
                None => panic!("session closed"),
            }
        }
    })
    .await
    .expect("worker ready");
    assert_eq!(ready.model, reference);
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 8,
        ..Default::default()
    };
    let mut s = c
        .start(
            Request::Infer {
                worker: Some(worker.id.clone()),
                model: None,
                prompt: "The capital of France is".into(),
                params,
            },
            None,
        )
        .await
        .unwrap();
    let mut text = String::new();
    loop {
        match s.next().await {
            Some(rbee_client::Streamed::Token(t)) => text.push_str(&t),
            Some(rbee_client::Streamed::Reply(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(text.contains("Paris"), "{text:?}");
}
