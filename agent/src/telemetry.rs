//! Node telemetry: sysinfo for CPU, memory and disk; NVML for GPUs when a driver is present.
use std::collections::HashMap;
use std::path::PathBuf;

use rbee_proto::session::{GpuProcess, GpuTelemetry, Telemetry};
use sysinfo::{Disks, System};

/// Samples this node's resources; keeps the system handles between samples.
pub struct Collector {
    sys: System,
    disks: Disks,
    nvml: Result<nvml_wrapper::Nvml, String>,
    store: PathBuf,
}

impl Collector {
    /// `store` is the model store whose disk's free space is reported.
    pub fn new(store: PathBuf) -> Self {
        let nvml = nvml_wrapper::Nvml::init()
            .map_err(|e| format!("no GPU: NVIDIA driver not available ({e})"));
        match &nvml {
            Ok(_) => tracing::info!("NVML initialised"),
            Err(e) => tracing::info!("{e}; serving on CPU"),
        }
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        Self {
            sys,
            disks: Disks::new_with_refreshed_list(),
            nvml,
            store,
        }
    }

    /// Whether NVML (an NVIDIA driver) is available.
    pub fn has_gpu(&self) -> bool {
        self.nvml.is_ok()
    }

    /// Free bytes of GPU `index`, if NVML can tell.
    pub fn gpu_free_bytes(&self, index: u32) -> Option<u64> {
        let nvml = self.nvml.as_ref().ok()?;
        let dev = nvml.device_by_index(index).ok()?;
        dev.memory_info().ok().map(|m| m.free)
    }

    /// RAM that can be given to new processes, in bytes.
    pub fn available_memory(&mut self) -> u64 {
        self.sys.refresh_memory();
        self.sys.available_memory()
    }

    /// Free bytes on the disk holding the model store.
    pub fn disk_free(&mut self) -> u64 {
        self.disks.refresh(true);
        let store = self
            .store
            .canonicalize()
            .unwrap_or_else(|_| self.store.clone());
        self.disks
            .list()
            .iter()
            .filter(|d| store.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| d.available_space())
            .unwrap_or(0)
    }

    /// One sample. `workers` maps worker pids to worker ids so GPU processes can be named.
    pub fn sample(&mut self, workers: &HashMap<u32, String>) -> Telemetry {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let disk_free_bytes = self.disk_free();
        let (gpus, gpu_status) = match &self.nvml {
            Err(e) => (Vec::new(), e.clone()),
            Ok(nvml) => match gpus(nvml, workers) {
                Ok(g) => {
                    let status = format!("{} GPU(s)", g.len());
                    (g, status)
                }
                Err(e) => (Vec::new(), format!("NVML error: {e}")),
            },
        };
        Telemetry {
            at: rbee_proto::now_millis(),
            cpu_percent: self.sys.global_cpu_usage(),
            mem_total_bytes: self.sys.total_memory(),
            mem_used_bytes: self.sys.used_memory(),
            disk_free_bytes,
            gpus,
            gpu_status,
        }
    }
}

fn gpus(
    nvml: &nvml_wrapper::Nvml,
    workers: &HashMap<u32, String>,
) -> Result<Vec<GpuTelemetry>, nvml_wrapper::error::NvmlError> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::enums::device::UsedGpuMemory;
    let count = nvml.device_count()?;
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        let dev = nvml.device_by_index(index)?;
        let mem = dev.memory_info()?;
        let processes = dev
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                },
                worker: workers.get(&p.pid).cloned(),
            })
            .collect();
        out.push(GpuTelemetry {
            index,
            name: dev.name().unwrap_or_else(|_| "unknown GPU".into()),
            mem_total_bytes: mem.total,
            mem_used_bytes: mem.used,
            utilization_percent: dev.utilization_rates().map(|u| u.gpu).unwrap_or(0),
            temperature_c: dev.temperature(TemperatureSensor::Gpu).unwrap_or(0),
            power_watts: dev
                .power_usage()
                .map(|mw| mw as f32 / 1000.0)
                .unwrap_or(0.0),
            processes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reports_this_machine() {
        let mut c = Collector::new(std::env::temp_dir());
        let t = c.sample(&HashMap::new());
        assert!(t.mem_total_bytes > 0);
        assert!(t.disk_free_bytes > 0);
        if !c.has_gpu() {
            assert!(t.gpu_status.starts_with("no GPU"), "{}", t.gpu_status);
            assert!(t.gpus.is_empty());
        }
    }
}
