//! Helpers shared by the worker's end-to-end tests: the real binary, in protocol mode or not.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rbee_proto::frame::{decode, encode};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{ModelSummary, SamplingParams};
use rbee_testkit::{model_path, workspace_root};

/// The real worker binary, on one thread (tests run side by side).
pub fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbee-worker"));
    c.arg("--threads").arg("1");
    c
}

/// Greedy sampling for `n` tokens.
pub fn greedy(n: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: n,
        ..Default::default()
    }
}

/// The Gemma 3 270M test model (Q4_K_M GGUF, base model without a chat template), fetched by
/// `assets/fetch-model.sh`.
pub fn gemma_path() -> PathBuf {
    let p = std::env::var_os("RBEE_TEST_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("assets/models/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        p.is_file(),
        "test model {} missing; run assets/fetch-model.sh",
        p.display()
    );
    p
}

/// A worker in protocol mode, with its frames collected by a reader thread.
pub struct Proto {
    /// The worker process.
    pub child: Child,
    stdin: ChildStdin,
    /// Every frame the worker writes, in order.
    pub rx: mpsc::Receiver<FromWorker>,
}

impl Proto {
    /// Start a worker on `model`.
    pub fn start_on(model: &Path, extra: &[&str]) -> Proto {
        Self::spawn(
            worker().arg("--model").arg(model).args(extra),
            Stdio::null(),
        )
    }

    /// Start a worker on the test model with its debug log written to `log`.
    pub fn start_logged(extra: &[&str], log: &Path) -> Proto {
        let file = std::fs::File::create(log).unwrap();
        let mut c = worker();
        c.arg("--model").arg(model_path()).args(extra);
        c.env("RBEE_LOG", "rbee_worker=debug");
        Self::spawn(&mut c, file.into())
    }

    fn spawn(c: &mut Command, stderr: Stdio) -> Proto {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = decode::<FromWorker>(&line)
                    .unwrap_or_else(|e| panic!("worker wrote a bad frame {line:?}: {e}"));
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        Proto { child, stdin, rx }
    }

    pub fn send(&mut self, msg: &ToWorker) {
        self.send_raw(&encode(msg));
    }

    pub fn send_raw(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Next frame that is not a heartbeat or loading progress.
    pub fn next(&self) -> FromWorker {
        loop {
            match self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .expect("worker went silent")
            {
                FromWorker::Heartbeat { .. }
                | FromWorker::Loading { .. }
                | FromWorker::Hello { .. } => continue,
                m => return m,
            }
        }
    }

    /// Start a worker on the test model (SmolLM2, llama family).
    pub fn start(extra: &[&str]) -> Proto {
        Self::start_on(&model_path(), extra)
    }

    /// Wait for `Ready` and return what it reports.
    pub fn ready_summary(&self) -> ModelSummary {
        match self.next() {
            FromWorker::Ready { model } => model,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Wait for `Ready` from the llama-family test model.
    pub fn ready(&self) {
        assert_eq!(self.ready_summary().architecture, "llama");
    }

    /// Collect a request's text until its Done or Error.
    pub fn collect(&self, id: u64) -> (String, FromWorker) {
        let mut text = String::new();
        loop {
            match self.next() {
                FromWorker::Token { id: i, text: t } if i == id => text.push_str(&t),
                m @ FromWorker::Done { id: i, .. } if i == id => return (text, m),
                m @ FromWorker::Error { id: Some(i), .. } if i == id => return (text, m),
                other => panic!("unexpected frame while collecting {id}: {other:?}"),
            }
        }
    }
}

impl Drop for Proto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
