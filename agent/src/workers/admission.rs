//! Admission: a spawn request is checked up front (model reference, device, threads, memory) so
//! a worker that cannot run is refused with a reason instead of crash-looping.
//!
//! What a worker needs is estimated from the model file's metadata before it starts
//! ([`rbee_store::estimate`]: weights as loaded on that device, KV cache for its context and
//! slots, prompt-pass activations, runtime; a safetensors directory from its tensor headers and
//! `config.json`); a file whose header cannot be read counts its size.
//! Memory is promised, not only measured: an admitted worker holds a [`Reservation`] of that
//! estimate on its device, shrunk to `estimate − measured` as the worker reports what it holds
//! (resident memory in its heartbeats, GPU memory in telemetry) — what it holds already shows in
//! the free-memory figure, the rest (a KV cache still to grow) stays promised — until it is
//! killed or its first run ends. Checking and reserving happen under one lock, so parallel spawns cannot all be
//! admitted against the same free memory.
//!
//! Devices: `cpu`, `cuda:N` (refused at once when no CUDA worker is installed or GPU N does not
//! exist) or `auto`: the GPU with the most free memory that fits, when the node has GPUs and a
//! CUDA worker; the CPU otherwise.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rbee_proto::config::AgentConfig;
use rbee_proto::session::SpawnSpec;
use rbee_proto::{ErrorCode, ProtoError};
use rbee_store::estimate::{default_parallel, estimate_header, host_qmm, host_repacks, RunShape};
use rbee_store::estimate_st::estimate_dir;
use rbee_store::gguf::GgufHeader;
use rbee_store::{DeviceChoice, DeviceSpec, ModelFiles, Store};

use crate::telemetry::Collector;
use rbee_proto::fmt::bytes as human_bytes;

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtoError {
    ProtoError::new(code, msg)
}

/// The CUDA worker's file name; it lives beside `rbee-worker` (scripts/build-cuda.sh builds it).
pub const CUDA_WORKER: &str = "rbee-worker-cuda";

/// Where the CUDA worker for `worker_bin` is: beside it, named [`CUDA_WORKER`].
pub fn cuda_worker_path(worker_bin: &Path) -> PathBuf {
    worker_bin.with_file_name(CUDA_WORKER)
}

/// Which backends this node's worker binaries run, found once at start.
#[derive(Debug, Clone)]
pub(crate) struct Backends {
    /// The CUDA worker, when it is installed and starts.
    pub cuda: Option<PathBuf>,
    /// Why there is no CUDA backend (shown when `cuda:N` is asked for).
    pub cuda_missing: String,
}

impl Backends {
    /// Look for the CUDA worker beside `worker_bin` and check that it starts (`--version`
    /// names `cuda` among its backends).
    pub(crate) fn probe(worker_bin: &Path) -> Self {
        let path = cuda_worker_path(worker_bin);
        if !path.is_file() {
            return Self {
                cuda: None,
                cuda_missing: format!(
                    "no CUDA worker installed on this node ({} not found; build it with scripts/build-cuda.sh)",
                    path.display()
                ),
            };
        }
        match version_of(&path) {
            Ok(v) if v.contains("cuda") => Self {
                cuda: Some(path),
                cuda_missing: String::new(),
            },
            Ok(v) => Self {
                cuda: None,
                cuda_missing: format!("{} is not a CUDA build ({v})", path.display()),
            },
            Err(e) => Self {
                cuda: None,
                cuda_missing: format!("the CUDA worker {} does not start: {e}", path.display()),
            },
        }
    }

    /// `cpu`, plus `cuda` when the CUDA worker runs.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v = vec!["cpu".to_string()];
        if self.cuda.is_some() {
            v.push("cuda".into());
        }
        v
    }
}

/// `BIN --version`'s first line, within 10 s.
fn version_of(bin: &Path) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    for _ in 0..100 {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            if !out.status.success() {
                let why = text(&out.stderr);
                return Err(why.lines().next().unwrap_or("failed").to_string());
            }
            return Ok(text(&out.stdout).lines().next().unwrap_or("").to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("`--version` did not answer within 10 s".into())
}

/// Decides whether a spawn fits on this node.
pub(crate) struct Admission {
    cfg: Arc<AgentConfig>,
    collector: Arc<Mutex<Collector>>,
    promised: Promised,
    worker_bin: PathBuf,
    backends: Mutex<Backends>,
}

/// Bytes promised to workers still starting, per device (`None` is host RAM).
type Promised = Arc<Mutex<HashMap<Option<u32>, Held>>>;

#[derive(Default)]
struct Held {
    bytes: u64,
    workers: u32,
}

fn held(p: &Promised) -> MutexGuard<'_, HashMap<Option<u32>, Held>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Memory promised to one admitted worker: its estimate less what it is measured to hold
/// already (which the free-memory figure then shows), so a worker whose KV cache is still to
/// grow keeps the rest of its estimate promised. Given back when dropped.
pub(crate) struct Reservation {
    promised: Promised,
    device: Option<u32>,
    estimate: u64,
    /// What is counted in `promised` now (written under its lock).
    bytes: std::sync::atomic::AtomicU64,
}

impl Reservation {
    /// The worker holds `bytes` now (resident memory for a CPU worker, memory on its GPU for a
    /// GPU worker): promise only the rest of its estimate.
    pub(crate) fn measured(&self, bytes: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut p = held(&self.promised);
        let new = self.estimate.saturating_sub(bytes);
        let old = self.bytes.swap(new, SeqCst);
        if let Some(h) = p.get_mut(&self.device) {
            h.bytes = h.bytes.saturating_sub(old) + new;
            match (old > 0, new > 0) {
                (true, false) => h.workers = h.workers.saturating_sub(1),
                (false, true) => h.workers += 1,
                _ => {}
            }
        }
    }

    /// Whether the promise is GPU memory (measured by NVML) rather than RAM (resident size).
    pub(crate) fn on_gpu(&self) -> bool {
        self.device.is_some()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        if let Some(h) = held(&self.promised).get_mut(&self.device) {
            h.bytes = h.bytes.saturating_sub(bytes);
            if bytes > 0 {
                h.workers = h.workers.saturating_sub(1);
            }
        }
    }
}

/// `threads`, when given, must be between 1 and the CPUs this agent may use.
fn check_threads(threads: Option<usize>) -> Result<(), ProtoError> {
    let Some(t) = threads else { return Ok(()) };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if t == 0 || t > cpus {
        return Err(err(
            ErrorCode::BadRequest,
            format!("threads = {t} is out of range: this node has {cpus} CPUs, so 1 to {cpus}"),
        ));
    }
    Ok(())
}

/// Most sequences one worker may be asked to decode at once.
const MAX_PARALLEL: u32 = 64;

/// `parallel` and `ctx` within what a worker can honour, refused with the range otherwise.
fn check_slots(spec: &SpawnSpec) -> Result<(), ProtoError> {
    if let Some(p) = spec.parallel.filter(|p| !(1..=MAX_PARALLEL).contains(p)) {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("parallel = {p} is out of range: 1 to {MAX_PARALLEL} sequences per worker"),
        ));
    }
    if let Some(c) = spec.ctx.filter(|c| *c < 64) {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("ctx = {c} is too small: at least 64 tokens (the model's own when absent)"),
        ));
    }
    Ok(())
}

/// An admitted spawn: what to start the worker with, and the memory promised to it.
pub(crate) struct Admitted {
    /// The model as the store resolved it: a canonical path inside the store, or an `hf:` ref.
    pub reference: String,
    /// The device it runs on (`auto` resolved): `cpu` or `cuda:N`.
    pub device: String,
    pub reservation: Reservation,
}

/// What one worker of a model needs on a device, and how it was found.
struct Need {
    bytes: u64,
    /// `weights …, KV cache …` when estimated from the header; empty when it is the file size.
    detail: String,
}

/// The model file as admission sees it: its header when it is a readable GGUF file, else its
/// size (safetensors, an `hf:` ref not pulled yet (0), or a file the worker will refuse).
struct Model {
    header: Option<GgufHeader>,
    /// A safetensors directory.
    dir: Option<ModelFiles>,
    size: u64,
}

impl Model {
    /// What admission knows of the model at `path` (of `size` bytes).
    fn read(path: &Path, size: u64) -> Self {
        let gguf = path.is_file() && path.extension().is_some_and(|e| e == "gguf");
        let header = gguf.then(|| GgufHeader::read(path)).and_then(|r| {
            r.map_err(|e| tracing::debug!("no estimate, counting the file size: {e}"))
                .ok()
        });
        let dir = path
            .is_dir()
            .then(|| ModelFiles::from_dir(path).ok())
            .flatten();
        Self { header, dir, size }
    }

    fn need(&self, spec: &SpawnSpec, device: DeviceSpec) -> Need {
        let shape = |parallel| RunShape {
            device,
            context: spec.ctx,
            parallel,
            // The worker inherits the agent's environment.
            keep_quant: std::env::var_os("RBEE_WORKER_KEEP_QUANT").is_some(),
            repack: host_repacks(),
            qmm: host_qmm(),
        };
        let e = match (&self.header, &self.dir) {
            (Some(h), _) => estimate_header(
                h,
                shape(spec.parallel.unwrap_or_else(|| default_parallel(h))),
            ),
            (None, Some(files)) => match estimate_dir(files, shape(1)) {
                Ok(e) => e,
                Err(_) => return self.file_size(),
            },
            (None, None) => return self.file_size(),
        };
        Need {
            bytes: e.total(),
            detail: e.describe(),
        }
    }

    fn file_size(&self) -> Need {
        Need {
            bytes: self.size,
            detail: String::new(),
        }
    }
}

impl Admission {
    pub(crate) fn new(cfg: Arc<AgentConfig>, collector: Arc<Mutex<Collector>>) -> Self {
        let worker_bin = cfg.worker_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .map(|e| e.with_file_name("rbee-worker"))
                .unwrap_or_else(|_| PathBuf::from("rbee-worker"))
        });
        let backends = Backends::probe(&worker_bin);
        tracing::info!(backends = ?backends.names(), "worker backends");
        if backends.cuda.is_none() {
            tracing::info!("{}", backends.cuda_missing);
        }
        collector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_backends(backends.names());
        Self {
            cfg,
            collector,
            promised: Promised::default(),
            worker_bin,
            backends: Mutex::new(backends),
        }
    }

    /// The backends, looked for again when there is no CUDA worker yet but its file now exists
    /// (`nodes add` may install it beside a running agent).
    fn backends(&self) -> Backends {
        let mut b = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if b.cuda.is_none() && cuda_worker_path(&self.worker_bin).is_file() {
            *b = Backends::probe(&self.worker_bin);
            tracing::info!(backends = ?b.names(), "worker backends looked for again");
            self.collector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_backends(b.names());
        }
        b.clone()
    }

    /// Check a spawn request (model reference, device, threads, memory) and promise it the
    /// memory its model needs.
    pub(crate) fn admit(&self, spec: &SpawnSpec) -> Result<Admitted, ProtoError> {
        let choice = DeviceChoice::parse(&spec.device)?;
        check_threads(spec.threads)?;
        check_slots(spec)?;
        let found = Store::new(self.cfg.model_dirs.clone()).find(&spec.model)?;
        let path = Path::new(&found.reference);
        let model = Model::read(path, found.size_bytes);
        let backends = match choice {
            DeviceChoice::Exact(DeviceSpec::Cpu) => None,
            _ => Some(self.backends()),
        };
        if let (DeviceChoice::Exact(DeviceSpec::Cuda(_)), Some(b)) = (choice, &backends) {
            // No GPU at all is the first thing to say; then no CUDA worker for it.
            let has_gpu = {
                let c = self.collector.lock().unwrap_or_else(|p| p.into_inner());
                c.has_gpu()
            };
            if !has_gpu {
                return Err(no_gpu(&spec.device));
            }
            check_cuda(b, &spec.device)?;
        }
        // One admission at a time from here: measure, compare with what is promised, promise.
        let mut promised = held(&self.promised);
        let device = match choice {
            DeviceChoice::Exact(d) => d,
            DeviceChoice::Auto => {
                let has_cuda = backends.as_ref().is_some_and(|b| b.cuda.is_some());
                self.choose(spec, &model, &promised, has_cuda)?
            }
        };
        let gpu_index = device.gpu();
        let need = model.need(spec, device);
        let free = self.free_bytes(gpu_index, &spec.device)?;
        let h = promised.entry(gpu_index).or_default();
        self.check_fits(&need, gpu_index, free, h)?;
        h.bytes += need.bytes;
        h.workers += 1;
        let reservation = Reservation {
            promised: self.promised.clone(),
            device: gpu_index,
            estimate: need.bytes,
            bytes: need.bytes.into(),
        };
        Ok(Admitted {
            reference: found.reference,
            device: device.to_string(),
            reservation,
        })
    }

    /// `auto`: the GPU with the most memory left after promises that fits the model; the CPU
    /// when the node has no GPU or no CUDA worker.
    fn choose(
        &self,
        spec: &SpawnSpec,
        model: &Model,
        promised: &HashMap<Option<u32>, Held>,
        has_cuda: bool,
    ) -> Result<DeviceSpec, ProtoError> {
        let gpus = {
            let c = self.collector.lock().unwrap_or_else(|p| p.into_inner());
            c.gpu_free()
        };
        if gpus.is_empty() || !has_cuda {
            return Ok(DeviceSpec::Cpu);
        }
        let headroom = self.cfg.admission_headroom_bytes;
        let left =
            |i: u32, free: u64| free.saturating_sub(promised.get(&Some(i)).map_or(0, |h| h.bytes));
        let mut ranked: Vec<_> = gpus
            .iter()
            .map(|(i, free, _)| (*i, left(*i, *free)))
            .collect();
        ranked.sort_by_key(|(i, left)| (std::cmp::Reverse(*left), *i));
        let need = |i| model.need(spec, DeviceSpec::Cuda(i)).bytes;
        if let Some((i, _)) = ranked
            .iter()
            .find(|(i, left)| need(*i).saturating_add(headroom) <= *left)
        {
            return Ok(DeviceSpec::Cuda(*i));
        }
        let each: Vec<String> = ranked
            .iter()
            .map(|(i, left)| format!("GPU {i} has {}", human_bytes(*left)))
            .collect();
        let n = model.need(spec, DeviceSpec::Cuda(0));
        Err(err(
            ErrorCode::InsufficientMemory,
            format!(
                "no GPU fits: model needs {} plus {} headroom{} but {} free after promises; \
                 spawn with a smaller --ctx or --parallel, or on another node",
                human_bytes(n.bytes),
                human_bytes(headroom),
                paren(&n.detail),
                each.join(", "),
            ),
        ))
    }

    /// Refuse with the numbers when `need` does not fit in `free` less what is promised.
    fn check_fits(
        &self,
        need: &Need,
        gpu_index: Option<u32>,
        free: u64,
        h: &Held,
    ) -> Result<(), ProtoError> {
        let headroom = self.cfg.admission_headroom_bytes;
        if need.bytes == 0 || need.bytes.saturating_add(headroom) <= free.saturating_sub(h.bytes) {
            return Ok(());
        }
        let room = match gpu_index {
            None => format!("only {} of RAM is free", human_bytes(free)),
            Some(i) => format!("GPU {i} has {} free", human_bytes(free)),
        };
        let promised = match h.workers {
            0 => String::new(),
            n => format!(
                " and {} of it is promised to {n} worker(s) still starting or growing to their estimate",
                human_bytes(h.bytes)
            ),
        };
        Err(err(
            ErrorCode::InsufficientMemory,
            format!(
                "model needs {} plus {} headroom but {room}{promised}{}; spawn with a smaller \
                 --ctx or --parallel, stop a worker, or use another node",
                human_bytes(need.bytes),
                human_bytes(headroom),
                paren(&format_need(&need.detail)),
            ),
        ))
    }

    /// Free bytes on the device a spawn asks for.
    fn free_bytes(&self, gpu_index: Option<u32>, device: &str) -> Result<u64, ProtoError> {
        let mut c = self.collector.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = gpu_index else {
            return Ok(c.available_memory());
        };
        if !c.has_gpu() {
            return Err(no_gpu(device));
        }
        c.gpu_free_bytes(i).ok_or_else(|| {
            let n = c.gpu_free().len();
            err(
                ErrorCode::BadRequest,
                format!(
                    "GPU {i} does not exist on this node (it has {n}: cuda:0 to cuda:{}); use one \
                     of them or --device auto",
                    n.saturating_sub(1)
                ),
            )
        })
    }
}

fn no_gpu(device: &str) -> ProtoError {
    err(
        ErrorCode::BadRequest,
        format!(
            "no GPU on this node (NVIDIA driver not available); cannot use {}: spawn with \
             --device auto or cpu",
            device.trim()
        ),
    )
}

/// `cuda:N` needs a CUDA worker.
fn check_cuda(b: &Backends, device: &str) -> Result<(), ProtoError> {
    if b.cuda.is_none() {
        return Err(err(
            ErrorCode::BadRequest,
            format!("cannot use {}: {}", device.trim(), b.cuda_missing),
        ));
    }
    Ok(())
}

fn format_need(detail: &str) -> String {
    // `1.8 GiB (weights …)` → `weights …`: the total is already in the sentence.
    detail
        .split_once(" (")
        .map(|(_, rest)| rest.trim_end_matches(')').to_string())
        .unwrap_or_default()
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; estimate: {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_must_fit_the_node() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(check_threads(None).is_ok());
        assert!(check_threads(Some(1)).is_ok());
        assert!(check_threads(Some(cpus)).is_ok());
        for t in [0, cpus + 1, 1_000_000_000] {
            let e = check_threads(Some(t)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message
                    .starts_with(&format!("threads = {t} is out of range")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn promises_add_up_and_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        let f = std::fs::File::create(&model).unwrap();
        let mut c = Collector::new(dir.path().to_path_buf());
        let free = c.available_memory();
        // A sparse model of a quarter of free memory (no readable header: its size counts):
        // three fit, the fourth does not.
        f.set_len(free / 4).unwrap();
        let cfg = Arc::new(AgentConfig {
            model_dirs: vec![dir.path().to_path_buf()],
            admission_headroom_bytes: free / 8,
            ..AgentConfig::default()
        });
        let a = Admission::new(cfg, Arc::new(Mutex::new(c)));
        let spec = SpawnSpec {
            model: model.display().to_string(),
            device: "cpu".into(),
            threads: None,
            ..Default::default()
        };
        let held: Vec<_> = (0..3).map(|_| a.admit(&spec).unwrap()).collect();
        let canonical = model.canonicalize().unwrap().display().to_string();
        assert!(held.iter().all(|h| h.reference == canonical));
        let e = a.admit(&spec).err().unwrap();
        assert_eq!(e.code, ErrorCode::InsufficientMemory);
        assert!(
            e.message.contains("promised to 3 worker(s) still starting"),
            "{}",
            e.message
        );
        drop(held);
        assert!(a.admit(&spec).is_ok(), "promises are given back");
    }

    #[test]
    fn a_promise_shrinks_to_what_the_worker_does_not_hold_yet() {
        let promised = Promised::default();
        held(&promised).insert(
            None,
            Held {
                bytes: 1000,
                workers: 1,
            },
        );
        let r = Reservation {
            promised: promised.clone(),
            device: None,
            estimate: 1000,
            bytes: 1000.into(),
        };
        let now = || {
            let p = held(&promised);
            (p[&None].bytes, p[&None].workers)
        };
        r.measured(300);
        assert_eq!(now(), (700, 1), "the rest of the estimate stays promised");
        r.measured(1200);
        assert_eq!(
            now(),
            (0, 0),
            "holding more than estimated promises nothing"
        );
        r.measured(900);
        assert_eq!(now(), (100, 1));
        drop(r);
        assert_eq!(now(), (0, 0), "given back");
    }

    #[test]
    fn cuda_without_a_cuda_worker_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backends::probe(&dir.path().join("rbee-worker"));
        assert_eq!(b.names(), ["cpu"]);
        assert!(
            b.cuda_missing.contains("no CUDA worker installed"),
            "{}",
            b.cuda_missing
        );
        assert!(
            b.cuda_missing.contains("scripts/build-cuda.sh"),
            "{}",
            b.cuda_missing
        );
    }
}
