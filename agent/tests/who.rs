//! Who did what: every audit entry of a session names who the client says it is (tool, user,
//! host) and which token it used, `auth_ok` included; per-operator tokens made with
//! `rbee-agent token add` are accepted beside the node token, named, listed and revocable on a
//! running agent.
use std::process::Command;

use rbee_client::{Client, ClientError};
use rbee_proto::session::{AuditEntry, Reply, Request, SpawnSpec};
use rbee_testkit::{bin, model_path, AgentProc};

fn token_cmd(state: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("rbee-agent"))
        .arg("--state-dir")
        .arg(state)
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        // The answer (stdout), or the complaint when there is none.
        match String::from_utf8_lossy(&out.stdout).trim() {
            "" => String::from_utf8_lossy(&out.stderr).into_owned(),
            answer => answer.to_string(),
        },
    )
}

fn entries(agent: &AgentProc) -> Vec<AuditEntry> {
    agent
        .audit()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_entries_name_the_client_and_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let agent = AgentProc::start(&state, &[]);
    let (ok, alice) = token_cmd(&state, &["add", "alice"]);
    assert!(ok, "{alice}");
    assert_eq!(alice.len(), 48, "{alice}");
    let (ok, again) = token_cmd(&state, &["add", "alice"]);
    assert!(!ok && again.contains("already has a token"), "{again}");
    assert_eq!(token_cmd(&state, &["list"]), (true, "alice".into()));

    // Alice, on the running agent: her session's entries name her, her tool, user and host.
    let (c, _ev) = Client::connect(&agent.url, &alice, "who-test/1")
        .await
        .unwrap();
    let spec = SpawnSpec {
        model: model_path().display().to_string(),
        threads: Some(1),
        ..Default::default()
    };
    let Reply::Spawned { worker } = c.request(Request::Spawn(spec), None).await.unwrap() else {
        panic!("spawn")
    };
    c.request(Request::Kill { worker: worker.id }, None)
        .await
        .unwrap();
    let user = std::env::var("USER").unwrap_or_default();
    let log = entries(&agent);
    for action in ["auth_ok", "spawn", "kill"] {
        let e = log
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} in {log:?}"));
        let who = e.who.as_deref().unwrap_or_default();
        assert!(
            who.contains("operator alice")
                && who.contains("(who-test/1")
                && who.contains(&format!("{user}@")),
            "{action}: {who}"
        );
    }

    // Her token reads /metrics too.
    let metrics = metrics_status(&agent.url, &alice).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

    // Revoked: her token no longer logs in; the node token still does, and says so.
    assert!(token_cmd(&state, &["revoke", "alice"]).0);
    assert!(matches!(
        Client::connect(&agent.url, &alice, "who-test/1").await,
        Err(ClientError::Unauthorized { .. })
    ));
    let (_c, _ev) = Client::connect(&agent.url, &agent.token, "who-test/2")
        .await
        .unwrap();
    let log = entries(&agent);
    let last_ok = log.iter().rev().find(|e| e.action == "auth_ok").unwrap();
    let who = last_ok.who.as_deref().unwrap_or_default();
    assert!(
        who.contains("node token") && who.contains("who-test/2"),
        "{who}"
    );
    assert!(log.iter().any(|e| e.action == "auth_failed"));
    assert!(
        !token_cmd(&state, &["revoke", "alice"]).0,
        "nothing left to revoke"
    );
    let metrics = metrics_status(&agent.url, &alice).await;
    assert!(metrics.starts_with("HTTP/1.1 401"), "{metrics}");
}

/// The status line of `GET /metrics` with `token`.
async fn metrics_status(url: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or_default().to_string()
}
