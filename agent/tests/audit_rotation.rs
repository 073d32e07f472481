//! The audit log and the agent's own log rotate by size under a stream of sessions: every entry
//! and log line stays whole, in one file, and the kept files hold the newest in order.
use rbee_client::Client;
use rbee_proto::session::AuditEntry;
use rbee_testkit::AgentProc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_agent_log_lines_survive_rotation_whole() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "[logs]\nmax_bytes = 4096\nkeep = 2\n").unwrap();
    let state = dir.path().join("state");
    let own_log = dir.path().join("agent.log");
    let agent = AgentProc::start(
        &state,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--log-file",
            own_log.to_str().unwrap(),
        ],
    );
    for i in 0..150 {
        let (c, _ev) = Client::connect(&agent.url, &agent.token, &format!("rotation-{i:03}"))
            .await
            .unwrap();
        drop(c);
    }
    // Wait for the last session's entry to be on disk.
    rbee_testkit::wait_for(
        std::time::Duration::from_secs(20),
        "the last auth_ok",
        || agent.audit().contains("rotation-149").then_some(()),
    );
    let audit = state.join(rbee_proto::statedir::AUDIT);
    let files = [
        audit.with_extension("jsonl.2"),
        audit.with_extension("jsonl.1"),
        audit.clone(),
    ];
    assert!(!audit.with_extension("jsonl.3").exists(), "keep = 2");
    let mut sessions = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        for line in text.lines() {
            let e: AuditEntry = serde_json::from_str(line).expect("a whole entry per line");
            if e.action == "auth_ok" {
                let who = e.who.unwrap_or_default();
                let n = who.split("rotation-").nth(1).unwrap()[..3].to_string();
                sessions.push(n.parse::<u32>().unwrap());
            }
        }
    }
    // The newest sessions, in order, ending with the last.
    assert_eq!(sessions.last(), Some(&149));
    assert!(
        sessions.windows(2).all(|w| w[1] == w[0] + 1),
        "{sessions:?}"
    );
    assert!(
        sessions.len() > 10 && sessions[0] > 0,
        "older ones rotated away: {sessions:?}"
    );
    agent_log_rotated_whole(&own_log);
}

/// `agent.log` (written by the agent itself, `--log-file`) rotated too: at most `keep` older
/// files, each within the limit, every line a whole log line (it starts with its timestamp).
fn agent_log_rotated_whole(log: &std::path::Path) {
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", log.display()));
    assert!(rotated(1).exists() && rotated(2).exists() && !rotated(3).exists());
    let mut sessions = 0;
    for f in [rotated(2), rotated(1), log.to_path_buf()] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        for line in text.lines() {
            assert!(
                line.starts_with("20") && line.as_bytes()[4] == b'-',
                "a whole line: {line:?}"
            );
            sessions += usize::from(line.contains("session started"));
        }
    }
    assert!(sessions > 3, "the newest sessions are in the kept files");
}
