//! The cluster's one scrape target: `rbee-tui serve`'s `/metrics` in front of two real agents
//! (real workers on the real model), checked by Prometheus' own tools: `promtool check metrics`
//! on the relayed text, and a real Prometheus server scraping the gateway, asked through its HTTP
//! API for `rbee_node_up` of each node and for every PromQL expression of the Grafana dashboard
//! (`assets/grafana/rbee.json`).
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rbee_testkit::{bin, model_path, workspace_root, AgentProc};
use serde_json::{json, Value};

const SECRET: &str = "sk-metrics-test-0123456789";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rbee-tui serve` over `nodes` (name, agent); its base URL.
fn gateway(dir: &Path, nodes: &[(&str, &AgentProc)]) -> (Killed, String) {
    let mut toml = String::new();
    for (name, a) in nodes {
        let token = dir.join(format!("{name}.token"));
        std::fs::write(&token, &a.token).unwrap();
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\nurl = \"{}\"\ntoken_file = \"{}\"\n\n",
            a.url,
            token.display()
        ));
    }
    std::fs::write(dir.join("tui.toml"), toml).unwrap();
    std::fs::write(dir.join("keys"), format!("tester {SECRET}\n")).unwrap();
    let mut child = Command::new(bin("rbee-tui"))
        .arg("--config")
        .arg(dir.join("tui.toml"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api-key-file"])
        .arg(dir.join("keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("gateway.log")).unwrap(),
        ))
        .spawn()
        .expect("start rbee-tui serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gateway announces its address");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Killed(child), base)
}

/// curl's body, or None on a connection or HTTP error.
fn try_curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// curl's body, failing on an error.
fn curl(args: &[&str]) -> String {
    try_curl(args).unwrap_or_else(|| panic!("curl {args:?} failed"))
}

fn scrape(base: &str) -> String {
    curl(&[
        "-H",
        &format!("Authorization: Bearer {SECRET}"),
        &format!("{base}/metrics"),
    ])
}

fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `promtool check metrics`; skipped with a printed reason when promtool is not installed.
fn promtool_accepts(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIP promtool check: promtool not runnable ({e}); apt-get install prometheus"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the gateway's /metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A real Prometheus server scraping the gateway every second; None when it is not installed.
fn prometheus(dir: &Path, gateway: &str) -> Option<(Killed, String)> {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIP Prometheus server check: `prometheus` not installed (apt-get install prometheus)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = gateway.trim_start_matches("http://");
    std::fs::write(dir.join("prom.key"), SECRET).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rbee\n    static_configs:\n      - targets: [\"{target}\"]\n    authorization:\n      type: Bearer\n      credentials_file: {}\n",
        dir.join("prom.key").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).unwrap(),
        ))
        .spawn()
        .expect("start prometheus");
    Some((Killed(child), format!("http://127.0.0.1:{port}")))
}

/// An instant query through Prometheus' HTTP API: its result vector (fails on an API error).
fn query(prom: &str, expr: &str) -> Vec<Value> {
    let body = curl(&[
        "-G",
        &format!("{prom}/api/v1/query"),
        "--data-urlencode",
        &format!("query={expr}"),
    ]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// `rbee_node_up` per node as Prometheus last scraped it.
fn nodes_up(prom: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = query(prom, "rbee_node_up")
        .iter()
        .map(|r| {
            (
                r["metric"]["node"].as_str().unwrap_or("").to_string(),
                r["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Every PromQL expression of the dashboard, with Grafana's variables given values Prometheus
/// takes.
fn dashboard_exprs() -> Vec<String> {
    let path = workspace_root().join("assets/grafana/rbee.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the Grafana dashboard is well-formed JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            out.push(e.replace("$__rate_interval", "1m").replace("$node", ".*"));
        }
    }
    assert!(out.len() >= 20, "{out:?}");
    out
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("rbee_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

fn complete(base: &str) -> Value {
    let body = json!({"model": model_path().file_stem().unwrap().to_string_lossy(),
                      "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0});
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {SECRET}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        &format!("{base}/v1/completions"),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// Names the exposition may lack until something happens (a GPU, a crash): they must at least
/// be documented families of the agent.
fn documented(name: &str) -> bool {
    let readme = std::fs::read_to_string(workspace_root().join("agent/README.md")).unwrap();
    readme.contains(&format!("`{name}`"))
}

#[test]
fn one_scrape_target_for_the_cluster_checked_by_promtool_and_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(&dir.path().join("a"), &[]);
    let mut b = AgentProc::start(&dir.path().join("b"), &[]);
    let (_gw, base) = gateway(dir.path(), &[("alpha", &a), ("beta", &b)]);

    let first = scrape(&base);
    assert_eq!(
        value(&first, "rbee_node_up{node=\"alpha\"}"),
        Some(1.0),
        "{first}"
    );
    assert_eq!(
        value(&first, "rbee_node_up{node=\"beta\"}"),
        Some(1.0),
        "{first}"
    );
    for node in ["alpha", "beta"] {
        let up = format!("rbee_agent_uptime_seconds{{node=\"{node}\"}}");
        assert!(value(&first, &up).is_some(), "{up} missing:\n{first}");
    }
    assert_eq!(value(&first, "rbee_gateway_requests_total "), Some(0.0));
    promtool_accepts(&first);

    // One completion: a worker is spawned on demand and its node's counters move.
    let answer = complete(&base);
    assert!(answer["choices"][0]["text"].is_string(), "{answer}");
    let after = scrape(&base);
    let tokens: f64 = after
        .lines()
        .filter(|l| l.starts_with("rbee_generated_tokens_total{node="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(tokens >= 1.0, "{after}");
    assert!(
        after.contains("rbee_time_to_first_token_seconds_count{node="),
        "{after}"
    );
    assert_eq!(value(&after, "rbee_gateway_requests_total "), Some(1.0));
    promtool_accepts(&after);

    let prom = prometheus(dir.path(), &base);
    if let Some((_p, url)) = &prom {
        let both = vec![
            ("alpha".to_string(), "1".to_string()),
            ("beta".to_string(), "1".to_string()),
        ];
        wait_until(
            "Prometheus to scrape both nodes",
            Duration::from_secs(60),
            || {
                try_curl(&[&format!("{url}/-/ready")])?;
                Some(nodes_up(url)).filter(|v| *v == both)
            },
        );
        check_dashboard(url);
    }

    // A killed agent: its node goes to 0 in the relay and in Prometheus.
    b.signal_and_wait(9);
    let down = wait_until("beta to show as down", Duration::from_secs(30), || {
        let m = scrape(&base);
        (value(&m, "rbee_node_up{node=\"beta\"}") == Some(0.0)).then_some(m)
    });
    assert_eq!(value(&down, "rbee_node_up{node=\"alpha\"}"), Some(1.0));
    assert!(!down.contains("{node=\"beta\","), "{down}");
    promtool_accepts(&down);
    if let Some((_p, url)) = &prom {
        let want = vec![
            ("alpha".to_string(), "1".to_string()),
            ("beta".to_string(), "0".to_string()),
        ];
        wait_until(
            "Prometheus to see beta down",
            Duration::from_secs(30),
            || Some(nodes_up(url)).filter(|v| *v == want),
        );
    }
}

/// Every dashboard expression evaluates without error, and every metric it names is one the
/// project exports: in the live scrape, or a documented agent family not yet sampled.
fn check_dashboard(prom: &str) {
    let body = curl(&[&format!("{prom}/api/v1/label/__name__/values")]);
    let names: Value = serde_json::from_str(&body).unwrap();
    let scraped: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expr in dashboard_exprs() {
        query(prom, &expr);
        for name in metric_names(&expr) {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                scraped.contains(&name.as_str()) || documented(&name) || documented(base),
                "the dashboard uses {name}, which no scrape shows and no agent family is (in {expr})"
            );
        }
    }
    for must in [
        "rbee_node_up",
        "rbee_generated_tokens_total",
        "rbee_time_to_first_token_seconds_bucket",
        "rbee_inference_duration_seconds_bucket",
        "rbee_workers",
        "rbee_gateway_requests_total",
    ] {
        assert!(scraped.contains(&must), "{must} not scraped: {scraped:?}");
    }
}
