//! Admission: a spawn request is checked up front (model reference, device, threads, memory) so
//! a worker that cannot run is refused with a reason instead of crash-looping.
//!
//! Memory is promised, not only measured: an admitted worker holds a [`Reservation`] of its
//! model's size on its device until it is ready (its memory then shows in the measurement) or
//! its first run ends. Checking and reserving happen under one lock, so parallel spawns cannot
//! all be admitted against the same free memory.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rbee_proto::config::AgentConfig;
use rbee_proto::session::SpawnSpec;
use rbee_proto::{ErrorCode, ProtoError};
use rbee_store::{DeviceSpec, Store};

use crate::telemetry::Collector;
use rbee_proto::fmt::bytes as human_bytes;

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtoError {
    ProtoError::new(code, msg)
}

/// Decides whether a spawn fits on this node.
pub(crate) struct Admission {
    cfg: Arc<AgentConfig>,
    collector: Arc<Mutex<Collector>>,
    promised: Promised,
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

/// Memory promised to one admitted worker; given back when dropped.
pub(crate) struct Reservation {
    promised: Promised,
    device: Option<u32>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(h) = held(&self.promised).get_mut(&self.device) {
            h.bytes = h.bytes.saturating_sub(self.bytes);
            h.workers = h.workers.saturating_sub(1);
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

/// An admitted spawn: what to start the worker with, and the memory promised to it.
pub(crate) struct Admitted {
    /// The model as the store resolved it: a canonical path inside the store, or an `hf:` ref.
    pub reference: String,
    pub reservation: Reservation,
}

impl Admission {
    pub(crate) fn new(cfg: Arc<AgentConfig>, collector: Arc<Mutex<Collector>>) -> Self {
        Self {
            cfg,
            collector,
            promised: Promised::default(),
        }
    }

    /// Check a spawn request (model reference, device, threads, memory) and promise it the
    /// memory its model needs.
    pub(crate) fn admit(&self, spec: &SpawnSpec) -> Result<Admitted, ProtoError> {
        let device = spec.device.trim();
        let gpu_index = DeviceSpec::parse(device)?.gpu();
        check_threads(spec.threads)?;
        // Size 0 when unknown (an `hf:` model not pulled yet: the worker fetches it itself).
        let found = Store::new(self.cfg.model_dirs.clone()).find(&spec.model)?;
        let size = found.size_bytes;
        // One admission at a time from here: measure, compare with what is promised, promise.
        let mut promised = held(&self.promised);
        let free = self.free_bytes(gpu_index, device)?;
        let h = promised.entry(gpu_index).or_default();
        let headroom = self.cfg.admission_headroom_bytes;
        if size > 0 && size.saturating_add(headroom) > free.saturating_sub(h.bytes) {
            let room = match gpu_index {
                None => format!("only {} of RAM is free", human_bytes(free)),
                Some(i) => format!("GPU {i} has {} free", human_bytes(free)),
            };
            let promised = match h.workers {
                0 => String::new(),
                n => format!(
                    " and {} of it is promised to {n} worker(s) still starting",
                    human_bytes(h.bytes)
                ),
            };
            return Err(err(
                ErrorCode::InsufficientMemory,
                format!(
                    "model needs {} plus {} headroom but {room}{promised}",
                    human_bytes(size),
                    human_bytes(headroom),
                ),
            ));
        }
        h.bytes += size;
        h.workers += 1;
        let reservation = Reservation {
            promised: self.promised.clone(),
            device: gpu_index,
            bytes: size,
        };
        Ok(Admitted {
            reference: found.reference,
            reservation,
        })
    }

    /// Free bytes on the device a spawn asks for.
    fn free_bytes(&self, gpu_index: Option<u32>, device: &str) -> Result<u64, ProtoError> {
        let mut c = self.collector.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = gpu_index else {
            return Ok(c.available_memory());
        };
        if !c.has_gpu() {
            return Err(err(
                ErrorCode::BadRequest,
                format!("no GPU on this node (NVIDIA driver not available); cannot use {device}"),
            ));
        }
        c.gpu_free_bytes(i).ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("GPU {i} does not exist on this node"),
            )
        })
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
        // A sparse model of a quarter of free memory: three fit, the fourth does not.
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
}
