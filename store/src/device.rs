//! The device a worker runs on, as a spawn request and `rbee-worker --device` spell it.
use std::fmt;
use std::str::FromStr;

use crate::StoreError;

/// `cpu`, or an NVIDIA GPU by ordinal (`cuda:N`; plain `cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The host CPUs.
    Cpu,
    /// CUDA device N.
    Cuda(u32),
}

impl DeviceSpec {
    /// Parse `cpu`, `cuda` or `cuda:N` (surrounding spaces ignored).
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        let s = spec.trim();
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        match s.strip_prefix("cuda") {
            Some("") => Ok(DeviceSpec::Cuda(0)),
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse::<u32>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| bad(s)),
            None => Err(bad(s)),
        }
    }

    /// The GPU ordinal, `None` for the CPU.
    pub fn gpu(self) -> Option<u32> {
        match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(n) => Some(n),
        }
    }
}

/// What a spawn asks for: a device, or `auto` (the GPU with the most free memory that fits the
/// model, the CPU on a node without a usable GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// Let the agent choose.
    Auto,
    /// This device.
    Exact(DeviceSpec),
}

impl DeviceChoice {
    /// Parse `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        if spec.trim() == "auto" {
            return Ok(DeviceChoice::Auto);
        }
        DeviceSpec::parse(spec)
            .map(DeviceChoice::Exact)
            .map_err(|_| {
                StoreError::BadRequest(format!(
                    "device `{}` is not auto, cpu or cuda:N",
                    spec.trim()
                ))
            })
    }
}

fn bad(s: &str) -> StoreError {
    StoreError::BadRequest(format!("device `{s}` is not cpu or cuda:N"))
}

impl FromStr for DeviceSpec {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(DeviceSpec::parse(" cpu ").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cuda(3).gpu(), Some(3));
        assert_eq!(DeviceChoice::parse(" auto").unwrap(), DeviceChoice::Auto);
        assert_eq!(
            DeviceChoice::parse("cuda:1").unwrap(),
            DeviceChoice::Exact(DeviceSpec::Cuda(1))
        );
        assert!(DeviceChoice::parse("autos")
            .unwrap_err()
            .to_string()
            .contains("is not auto, cpu or cuda:N"));
        for bad in ["tpu", "tpu:0", "cuda:", "cuda:x", "cuda0", ""] {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert_eq!(e.code(), rbee_proto::ErrorCode::BadRequest);
            assert_eq!(
                e.to_string(),
                format!("device `{}` is not cpu or cuda:N", bad.trim())
            );
        }
    }
}
