//! Admission: a spawn request is checked up front (model reference, device, memory) so a worker
//! that cannot run is refused with a reason instead of crash-looping.
use std::path::Path;
use std::sync::{Arc, Mutex};

use rbee_proto::config::AgentConfig;
use rbee_proto::session::SpawnSpec;
use rbee_proto::{ErrorCode, ProtoError};

use crate::telemetry::Collector;
use rbee_proto::fmt::bytes as human_bytes;

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtoError {
    ProtoError::new(code, msg)
}

/// Decides whether a spawn fits on this node.
pub(crate) struct Admission {
    cfg: Arc<AgentConfig>,
    collector: Arc<Mutex<Collector>>,
}

/// `cpu` → `None`; `cuda` / `cuda:N` → `Some(N)`.
fn parse_device(device: &str) -> Result<Option<u32>, ProtoError> {
    if device == "cpu" {
        return Ok(None);
    }
    device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<u32>().ok())
        .or((device == "cuda").then_some(0))
        .map(Some)
        .ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("device `{device}` is not cpu or cuda:N"),
            )
        })
}

impl Admission {
    pub(crate) fn new(cfg: Arc<AgentConfig>, collector: Arc<Mutex<Collector>>) -> Self {
        Self { cfg, collector }
    }

    /// Bytes the model occupies on disk: what admission asks of free memory. 0 when unknown (an
    /// `hf:` reference not pulled yet: the worker resolves it itself).
    fn model_size(&self, spec: &SpawnSpec) -> Result<u64, ProtoError> {
        if spec.model.starts_with("hf:") {
            if let Some(Err(why)) = rbee_proto::types::HubRef::parse(&spec.model) {
                return Err(err(ErrorCode::BadRequest, why));
            }
            Ok(crate::pull::cached_size(&spec.model).unwrap_or(0))
        } else {
            let path = crate::models::check_allowed(Path::new(&spec.model), &self.cfg.model_dirs)?;
            Ok(crate::models::model_size(&path))
        }
    }

    /// Check a spawn request: model reference, device, and memory.
    pub(crate) fn check(&self, spec: &SpawnSpec) -> Result<(), ProtoError> {
        let device = spec.device.trim();
        let gpu_index = parse_device(device)?;
        let size = self.model_size(spec)?;
        let headroom = self.cfg.admission_headroom_bytes;
        let need = size + headroom;
        let mut c = self.collector.lock().unwrap_or_else(|p| p.into_inner());
        let (free, where_) = match gpu_index {
            None => (c.available_memory(), None),
            Some(i) => {
                if !c.has_gpu() {
                    return Err(err(ErrorCode::BadRequest, format!("no GPU on this node (NVIDIA driver not available); cannot use {device}")));
                }
                let free = c.gpu_free_bytes(i).ok_or_else(|| {
                    err(
                        ErrorCode::BadRequest,
                        format!("GPU {i} does not exist on this node"),
                    )
                })?;
                (free, Some(i))
            }
        };
        if size > 0 && need > free {
            let room = match where_ {
                None => format!("only {} of RAM is free", human_bytes(free)),
                Some(i) => format!("GPU {i} has {} free", human_bytes(free)),
            };
            return Err(err(
                ErrorCode::InsufficientMemory,
                format!(
                    "model needs {} plus {} headroom but {room}",
                    human_bytes(size),
                    human_bytes(headroom),
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu").unwrap(), None);
        assert_eq!(parse_device("cuda").unwrap(), Some(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Some(3));
        let e = parse_device("tpu").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.message, "device `tpu` is not cpu or cuda:N");
    }
}
