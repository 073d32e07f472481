//! Admission on a real agent: the memory estimate from the model's metadata, refusals with the
//! numbers, promises that keep concurrent spawns from overcommitting, and the device choice
//! (`auto`, `cuda:N`) on GPUs read from a recorded NVML sample (`RBEE_AGENT_GPU_SAMPLE`: this
//! machine has no GPU).
mod common;

use std::path::{Path, PathBuf};

use common::{bounded, script};
use rbee_client::ClientError;
use rbee_proto::session::{GpuTelemetry, Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::{ErrorCode, WorkerState};
use rbee_store::estimate::{estimate, RunShape};
use rbee_store::DeviceSpec;
use rbee_testkit::{bin, model_path, AgentProc};

const GIB: u64 = 1 << 30;

/// The estimate the agent makes for the test model on the CPU with one slot of `ctx` tokens.
fn smol_estimate(ctx: u32) -> u64 {
    let shape = RunShape {
        device: DeviceSpec::Cpu,
        context: Some(ctx),
        parallel: 1,
        keep_quant: false,
        repack: rbee_store::estimate::host_repacks(),
        qmm: rbee_store::estimate::host_qmm(),
    };
    estimate(&model_path(), shape).unwrap().unwrap().total()
}

fn smol(ctx: u32) -> SpawnSpec {
    SpawnSpec {
        model: model_path().display().to_string(),
        device: "cpu".into(),
        parallel: Some(1),
        ctx: Some(ctx),
        ..Default::default()
    }
}

/// A real agent with the real worker, no headroom, and `env`.
fn agent(dir: &Path, env: &[(&str, &str)]) -> AgentProc {
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "admission_headroom_bytes = 0\n").unwrap();
    let models = model_path().parent().unwrap().display().to_string();
    let args = ["--config", cfg.to_str().unwrap(), "--model-dir", &models];
    AgentProc::launch(
        &[],
        "127.0.0.1:0",
        &dir.join("state"),
        &bin("rbee-worker"),
        &args,
        env,
    )
}

fn refused(r: Result<Reply, ClientError>) -> rbee_proto::ProtoError {
    match r {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn spawned(r: Result<Reply, ClientError>) -> WorkerInfo {
    match r {
        Ok(Reply::Spawned { worker }) => worker,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

async fn wait_ready(c: &rbee_client::Client, id: &str) {
    bounded("worker ready", async {
        loop {
            let Ok(Reply::Workers { workers }) = c.request(Request::ListWorkers, None).await else {
                panic!("list_workers failed");
            };
            let w = workers.iter().find(|w| w.id == id).expect("worker listed");
            match w.state {
                WorkerState::Ready => return,
                WorkerState::Failed => panic!("worker failed: {w:?}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_that_does_not_fit_is_refused_with_the_estimate_and_what_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), &[("RBEE_AGENT_MEMORY_LIMIT", "200M")]);
    let (c, _ev) = a.connect().await;
    let e = refused(c.request(Request::Spawn(smol(8192)), None).await);
    assert_eq!(e.code, ErrorCode::InsufficientMemory, "{}", e.message);
    let m = &e.message;
    let needed = rbee_proto::fmt::bytes(smol_estimate(8192));
    assert!(
        m.starts_with(&format!(
            "model needs {needed} plus 0 B headroom but only 200 MiB of RAM is free"
        )),
        "{m}"
    );
    // The estimate's parts, not the file size (98 MB), are what is compared.
    for part in [
        "weights",
        "KV cache",
        "for 1 × 8192 tokens",
        "load transient",
    ] {
        assert!(m.contains(part), "{part}: {m}");
    }
    // Nothing was started.
    let Ok(Reply::Workers { workers }) = c.request(Request::ListWorkers, None).await else {
        panic!()
    };
    assert!(workers.is_empty(), "{workers:?}");
    assert!(a.audit().contains("spawn_refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_spawns_that_would_overcommit_admit_one() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one worker of the estimate and a third of another: whether the second spawn
    // arrives while the first is still loading (its promise counts) or after it is ready (its
    // resident memory counts against the limit), it does not fit.
    let one = smol_estimate(512);
    let limit = (one * 4 / 3).to_string();
    let a = agent(dir.path(), &[("RBEE_AGENT_MEMORY_LIMIT", &limit)]);
    let (c1, _e1) = a.connect().await;
    let (c2, _e2) = a.connect().await;
    let (r1, r2) = bounded(
        "two spawns",
        futures_util::future::join(
            c1.request(Request::Spawn(smol(512)), None),
            c2.request(Request::Spawn(smol(512)), None),
        ),
    )
    .await;
    let (ok, no) = match (r1, r2) {
        (Ok(r), e @ Err(_)) | (e @ Err(_), Ok(r)) => (spawned(Ok(r)), refused(e)),
        other => panic!("expected one admitted and one refused, got {other:?}"),
    };
    assert_eq!(no.code, ErrorCode::InsufficientMemory, "{}", no.message);
    assert!(no.message.starts_with("model needs "), "{}", no.message);
    // The admitted one loads the real model and answers.
    wait_ready(&c1, &ok.id).await;
    let reply = c1
        .request(
            Request::Infer {
                worker: Some(ok.id.clone()),
                model: None,
                prompt: "The capital of France is".into(),
                params: rbee_proto::SamplingParams {
                    max_tokens: 4,
                    ..Default::default()
                },
            },
            None,
        )
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    // Ready, it holds its memory for real: a third spawn is still refused, with what is free.
    let e = refused(c2.request(Request::Spawn(smol(512)), None).await);
    assert_eq!(e.code, ErrorCode::InsufficientMemory, "{}", e.message);
    assert!(e.message.contains("of RAM is free"), "{}", e.message);
    // Killed, its memory is back.
    c1.request(
        Request::Kill {
            worker: ok.id.clone(),
        },
        None,
    )
    .await
    .unwrap();
    let again = spawned(c2.request(Request::Spawn(smol(512)), None).await);
    wait_ready(&c2, &again.id).await;
}

/// A worker directory with a stand-in `rbee-worker` and, with `cuda`, a stand-in
/// `rbee-worker-cuda` whose `--version` names the cuda backend; both idle once started.
fn stand_in_workers(dir: &Path, cuda: bool) -> PathBuf {
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    let worker = script(&bins, "rbee-worker", "exec sleep 600");
    if cuda {
        script(
            &bins,
            "rbee-worker-cuda",
            r#"[ "$1" = --version ] && { echo "rbee-worker 0.1.0 (backends: cpu, cuda)"; exit 0; }
echo "$@" >> "$(dirname "$0")/cuda-launches"
exec sleep 600"#,
        );
    }
    worker
}

/// A recorded NVML sample: two 80 GiB GPUs with `free` bytes free each.
fn gpu_sample(dir: &Path, free: [u64; 2]) -> PathBuf {
    let gpus: Vec<GpuTelemetry> = free
        .iter()
        .enumerate()
        .map(|(i, f)| GpuTelemetry {
            index: i as u32,
            name: "NVIDIA H100 80GB HBM3".into(),
            mem_total_bytes: 80 * GIB,
            mem_used_bytes: 80 * GIB - f,
            ..Default::default()
        })
        .collect();
    let path = dir.join("gpus.json");
    std::fs::write(&path, serde_json::to_string(&gpus).unwrap()).unwrap();
    path
}

fn gpu_agent(dir: &Path, cuda: bool, free: [u64; 2]) -> AgentProc {
    let worker = stand_in_workers(dir, cuda);
    let sample = gpu_sample(dir, free);
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "admission_headroom_bytes = 0\n").unwrap();
    let models = model_path().parent().unwrap().display().to_string();
    let args = ["--config", cfg.to_str().unwrap(), "--model-dir", &models];
    let env = [("RBEE_AGENT_GPU_SAMPLE", sample.to_str().unwrap())];
    AgentProc::launch(&[], "127.0.0.1:0", &dir.join("state"), &worker, &args, &env)
}

fn on(device: &str) -> SpawnSpec {
    SpawnSpec {
        device: device.into(),
        parallel: Some(1),
        ctx: Some(4096),
        ..smol(4096)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_without_a_cuda_worker_refuse_cuda_at_once_and_auto_serves_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let a = gpu_agent(dir.path(), false, [40 * GIB, 40 * GIB]);
    let (c, _ev) = a.connect().await;
    let e = refused(c.request(Request::Spawn(on("cuda:0")), None).await);
    assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
    assert!(
        e.message
            .starts_with("cannot use cuda:0: no CUDA worker installed on this node"),
        "{}",
        e.message
    );
    assert!(e.message.contains("scripts/build-cuda.sh"), "{}", e.message);
    let w = spawned(c.request(Request::Spawn(on("auto")), None).await);
    assert_eq!(w.device, "cpu");
    let Ok(Reply::Status { status }) = c.request(Request::Status, None).await else {
        panic!()
    };
    assert_eq!(status.telemetry.backends, ["cpu"]);
    // A CUDA worker installed beside the running agent (as `nodes add` does) is found at the
    // next spawn that wants a GPU, without a restart.
    stand_in_workers(dir.path(), true);
    let w = spawned(c.request(Request::Spawn(on("cuda:0")), None).await);
    assert_eq!(w.device, "cuda:0");
    bounded("telemetry names the cuda backend", async {
        loop {
            let Ok(Reply::Status { status }) = c.request(Request::Status, None).await else {
                panic!()
            };
            if status.telemetry.backends == ["cpu", "cuda"] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_the_gpu_with_the_most_free_memory_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let need = {
        let shape = RunShape {
            device: DeviceSpec::Cuda(0),
            context: Some(4096),
            parallel: 1,
            keep_quant: false,
            repack: rbee_store::estimate::host_repacks(),
            qmm: rbee_store::estimate::host_qmm(),
        };
        estimate(&model_path(), shape).unwrap().unwrap().total()
    };
    // GPU 1 has the most free memory; once one worker is promised there, GPU 0 has more left.
    let free = [need * 5 / 2, need * 3];
    let a = gpu_agent(dir.path(), true, free);
    let (c, _ev) = a.connect().await;
    let Ok(Reply::Status { status }) = c.request(Request::Status, None).await else {
        panic!()
    };
    assert_eq!(status.telemetry.backends, ["cpu", "cuda"]);
    assert_eq!(status.telemetry.gpus.len(), 2);
    let first = spawned(c.request(Request::Spawn(on("auto")), None).await);
    assert_eq!(first.device, "cuda:1");
    // It runs on the CUDA worker, with the device chosen.
    let launches = dir.path().join("bin/cuda-launches");
    let line = rbee_testkit::wait_for(common::LIMIT, "the CUDA worker starts", || {
        std::fs::read_to_string(&launches)
            .ok()
            .filter(|l| !l.is_empty())
    });
    assert!(line.contains("--device cuda:1"), "{line}");
    let second = spawned(c.request(Request::Spawn(on("auto")), None).await);
    assert_eq!(
        second.device,
        "cuda:0",
        "GPU 1 has {} left, GPU 0 {}",
        free[1] - need,
        free[0]
    );
    let third = spawned(c.request(Request::Spawn(on("auto")), None).await);
    assert_eq!(third.device, "cuda:1");
    // Left: GPU 0 1.5 × need, GPU 1 1 × need, so a pin to GPU 1 fits once, not twice.
    spawned(c.request(Request::Spawn(on("cuda:1")), None).await);
    let e = refused(c.request(Request::Spawn(on("cuda:1")), None).await);
    assert_eq!(e.code, ErrorCode::InsufficientMemory, "{}", e.message);
    assert!(e.message.contains("GPU 1 has"), "{}", e.message);
    assert!(
        e.message.contains("promised to 3 worker(s) still starting"),
        "{}",
        e.message
    );
    // No GPU has room for a worker with 64 slots of full context: refused, naming each GPU.
    let big = SpawnSpec {
        parallel: Some(64),
        ctx: None,
        ..on("auto")
    };
    let e = refused(c.request(Request::Spawn(big), None).await);
    assert_eq!(e.code, ErrorCode::InsufficientMemory, "{}", e.message);
    assert!(
        e.message.starts_with("no GPU fits: model needs"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("GPU 0 has") && e.message.contains("GPU 1 has"),
        "{}",
        e.message
    );
    // An index that does not exist.
    let e = refused(c.request(Request::Spawn(on("cuda:7")), None).await);
    assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
    assert!(
        e.message.starts_with("GPU 7 does not exist on this node"),
        "{}",
        e.message
    );
}
