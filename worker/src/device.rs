//! Device selection: `cpu` or `cuda:N`.
use candle_core::Device;

use crate::model::LoadError;

/// Parse `cpu`, `cuda` or `cuda:N` into a candle device.
pub fn parse_device(spec: &str) -> Result<Device, LoadError> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                LoadError::Device(format!("`{spec}` is not a device; use cpu or cuda:N"))
            })?,
        None => {
            return Err(LoadError::Device(format!(
                "`{spec}` is not a device; use cpu or cuda:N"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(LoadError::Device(format!(
            "`{spec}` needs a CUDA build: this rbee-worker was built without the `cuda` feature \
             (rebuild with `cargo build --release --features cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| LoadError::Device(format!("cannot open {spec}: {e}")))
}

/// Short name of a device for reports.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        _ => format!("{:?}", device.location()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
    }

    #[test]
    fn garbage_is_named() {
        let e = parse_device("tpu:0").unwrap_err().to_string();
        assert!(e.contains("tpu:0"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
}
