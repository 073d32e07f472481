//! The estimate admission makes against the worker it would start: the real `rbee-worker` on
//! the test model, in protocol mode as the agent runs it (hello, one short request), its peak
//! resident memory compared with `rbee_store`'s estimate for what it holds then. Catches the
//! worker changing what it holds (a new copy of the weights, padding) without the estimate.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{SamplingParams, PROTOCOL_VERSION};
use rbee_store::estimate::{estimate_in_use, host_qmm, host_repacks, RunShape};
use rbee_store::gguf::GgufHeader;
use rbee_store::DeviceSpec;
use rbee_testkit::{bin, model_path};

/// VmHWM of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn the_workers_peak_memory_is_within_15_percent_of_the_estimate() {
    let model = model_path();
    let mut child = Command::new(bin("rbee-worker"))
        .args(["--model", model.to_str().unwrap(), "--threads", "1"])
        .args(["--heartbeat-ms", "60000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |m: &ToWorker| {
        writeln!(stdin, "{}", serde_json::to_string(m).unwrap()).unwrap();
        stdin.flush().unwrap();
    };
    let mut next = || -> FromWorker {
        let line = lines.next().expect("worker output").unwrap();
        serde_json::from_str(&line).unwrap()
    };
    send(&ToWorker::Hello {
        protocol_version: PROTOCOL_VERSION,
    });
    while !matches!(next(), FromWorker::Ready { .. }) {}
    send(&ToWorker::Generate {
        id: 1,
        prompt: "The capital of France is".into(),
        params: SamplingParams {
            max_tokens: 8,
            temperature: 0.0,
            ignore_eos: true,
            ..Default::default()
        },
        deadline: None,
    });
    let prompt_tokens = loop {
        match next() {
            FromWorker::Done { usage, .. } => break usage.prompt_tokens,
            FromWorker::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    let measured = peak_rss(child.id());
    send(&ToWorker::Shutdown);
    child.wait().unwrap();

    // The worker has 4 slots, but one request: one slot holds a KV cache.
    let shape = RunShape {
        device: DeviceSpec::Cpu,
        context: None,
        parallel: 1,
        keep_quant: std::env::var_os("RBEE_WORKER_KEEP_QUANT").is_some(),
        repack: host_repacks(),
        qmm: host_qmm(),
    };
    let h = GgufHeader::read(&model).unwrap();
    let e = estimate_in_use(&h, shape, prompt_tokens + 8, 512);
    let ratio = e.total() as f64 / measured as f64;
    println!(
        "estimate {} measured {measured} ratio {ratio:.3} (AVX512-VNNI: {}): {}",
        e.total(),
        host_repacks(),
        e.describe()
    );
    assert!(
        (0.85..=1.15).contains(&ratio),
        "estimate {} vs measured peak RSS {measured}: {}",
        e.total(),
        e.describe()
    );
}
