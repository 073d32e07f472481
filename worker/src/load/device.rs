//! Opening the candle device a [`DeviceSpec`] names.
use candle_core::Device;
use rbee_store::DeviceSpec;

use crate::error::LoadError;

/// Parse `cpu`, `cuda` or `cuda:N` and open that device.
pub fn open(spec: &str) -> Result<Device, LoadError> {
    let parsed = DeviceSpec::parse(spec).map_err(|e| LoadError::Device(e.to_string()))?;
    let ordinal = match parsed {
        DeviceSpec::Cpu => return Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => n as usize,
    };
    if !cfg!(feature = "cuda") {
        return Err(LoadError::Device(format!(
            "`{parsed}` needs a CUDA build: this rbee-worker was built without the `cuda` feature \
             (rebuild with `cargo build --release --features cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| LoadError::Device(format!("cannot open {parsed}: {e}")))
}

/// Short name of a device for reports (`cpu`, `cuda:0`).
pub fn name(device: &Device) -> String {
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
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
    }

    #[test]
    fn garbage_is_named() {
        let e = open("tpu:0").unwrap_err().to_string();
        assert!(e.contains("tpu:0"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = open("cuda:0").unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
}
