//! Running a command to completion with a time bound, and what the tests ask of its result.
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "`{}` failed ({})\nstdout: {}\nstderr: {}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("`{}`: not JSON ({e}): {}", self.what, self.stdout))
    }

    /// Failed, with exactly one `rbee-tui: …` line on stderr that contains every needle; the line.
    pub fn fails_with(&self, needles: &[&str]) -> String {
        assert!(
            !self.status.success(),
            "`{}` should have failed; stdout: {}",
            self.what,
            self.stdout
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`{}`: one line on stderr, got {:?}",
            self.what,
            self.stderr
        );
        assert!(lines[0].starts_with("rbee-tui: "), "{}", lines[0]);
        for n in needles {
            assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
        }
        lines[0].to_string()
    }
}

/// Run `cmd` to completion, killing it (and failing the test) after `limit`.
pub fn run_bounded(cmd: Command, limit: Duration) -> Run {
    run_bounded_stdin(cmd, Stdio::null(), limit)
}

/// `run_bounded` with `stdin` as the command's standard input (a file, for a scripted session).
pub fn run_bounded_stdin(mut cmd: Command, stdin: Stdio, limit: Duration) -> Run {
    let what = format!("{cmd:?}");
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let Some(status) = status else {
        panic!("`{what}` did not finish within {limit:?}\nstdout: {stdout}\nstderr: {stderr}");
    };
    Run {
        what,
        status,
        stdout,
        stderr,
    }
}

/// The NAME `models list --json` gives the test model (SmolLM2-135M-Instruct): what a person
/// would type after reading the list.
pub fn test_model_name(models: &Value) -> String {
    models
        .as_array()
        .expect("models list is an array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .find(|n| n.contains("SmolLM2-135M-Instruct"))
        .unwrap_or_else(|| panic!("the test model is not listed: {models}"))
        .to_string()
}

/// `nodes add n1 --url URL --token-file FILE`: the agent under test as the config's one node.
pub fn add_node_args<'a>(url: &'a str, token_file: &'a std::path::Path) -> [&'a str; 7] {
    let file = token_file.to_str().expect("token path is UTF-8");
    ["nodes", "add", "n1", "--url", url, "--token-file", file]
}
