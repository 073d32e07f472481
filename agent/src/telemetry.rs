//! Node telemetry: sysinfo for CPU, memory and disk; NVML for GPUs when a driver is present.
//!
//! Two environment variables change what admission sees (both read once, at start):
//!
//! - `RBEE_AGENT_MEMORY_LIMIT=BYTES` (suffixes `K`, `M`, `G`, `T`, powers of 1024): the RAM this
//!   agent's workers may hold in all. Free RAM for a new worker is then the smaller of the
//!   node's available memory and the limit less the resident memory of the agent's children.
//!   For operators sharing a machine, and for tests that need a small node.
//! - `RBEE_AGENT_GPU_SAMPLE=FILE`: **a test seam**, for machines without a GPU. The GPUs are read
//!   from FILE (a JSON array of `GpuTelemetry`, as NVML would report them: index, name, total and
//!   used memory, …) at every sample instead of from NVML. Unset (always, in production), the
//!   NVML path below is the only one.
use std::collections::HashMap;
use std::path::PathBuf;

use rbee_proto::session::{GpuProcess, GpuTelemetry, Telemetry};
use sysinfo::{Disks, System};

/// Where GPU figures come from.
enum Gpus {
    /// The NVIDIA driver, through NVML.
    Nvml(Box<nvml_wrapper::Nvml>),
    /// A recorded sample (`RBEE_AGENT_GPU_SAMPLE`; tests on machines without a GPU).
    Recorded(PathBuf),
    /// No usable GPU, and why.
    Absent(String),
}

/// Samples this node's resources; keeps the system handles between samples.
pub struct Collector {
    sys: System,
    disks: Disks,
    gpus: Gpus,
    store: PathBuf,
    memory_limit: Option<u64>,
    backends: Vec<String>,
}

/// Parse `1073741824`, `512M`, `4G`, `1.5G`: bytes, with optional binary suffixes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&s[..i], (1u64 << shift) as f64)
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult) as u64)
}

fn open_gpus() -> Gpus {
    if let Some(file) = std::env::var_os("RBEE_AGENT_GPU_SAMPLE") {
        let file = PathBuf::from(file);
        tracing::warn!(
            "GPUs read from the recorded sample {} (RBEE_AGENT_GPU_SAMPLE), not from NVML",
            file.display()
        );
        return Gpus::Recorded(file);
    }
    match nvml_wrapper::Nvml::init() {
        Ok(n) => {
            tracing::info!("NVML initialised");
            Gpus::Nvml(Box::new(n))
        }
        Err(e) => {
            let why = format!("no GPU: NVIDIA driver not available ({e})");
            tracing::info!("{why}; serving on CPU");
            Gpus::Absent(why)
        }
    }
}

fn recorded(file: &std::path::Path) -> Result<Vec<GpuTelemetry>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a GPU sample: {e}", file.display()))
}

impl Collector {
    /// `store` is the model store whose disk's free space is reported.
    pub fn new(store: PathBuf) -> Self {
        let memory_limit = std::env::var("RBEE_AGENT_MEMORY_LIMIT").ok().and_then(|v| {
            let parsed = parse_bytes(&v);
            match parsed {
                Some(b) => tracing::info!(
                    "workers may hold {b} bytes of RAM in all (RBEE_AGENT_MEMORY_LIMIT)"
                ),
                None => tracing::warn!("RBEE_AGENT_MEMORY_LIMIT={v} is not a size; ignored"),
            }
            parsed
        });
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        Self {
            sys,
            disks: Disks::new_with_refreshed_list(),
            gpus: open_gpus(),
            store,
            memory_limit,
            backends: vec!["cpu".into()],
        }
    }

    /// The backends this node's workers run, reported in every sample (admission finds them).
    pub fn set_backends(&mut self, backends: Vec<String>) {
        self.backends = backends;
    }

    /// Whether this node has GPUs to offer (NVML, or a recorded sample).
    pub fn has_gpu(&self) -> bool {
        !matches!(self.gpus, Gpus::Absent(_))
    }

    /// Every GPU with its free bytes, `(index, free, name)`; empty without GPUs.
    pub fn gpu_free(&self) -> Vec<(u32, u64, String)> {
        let list = match &self.gpus {
            Gpus::Absent(_) => return Vec::new(),
            Gpus::Recorded(f) => recorded(f).unwrap_or_default(),
            Gpus::Nvml(n) => gpus(n, &HashMap::new()).unwrap_or_default(),
        };
        list.into_iter()
            .map(|g| {
                (
                    g.index,
                    g.mem_total_bytes.saturating_sub(g.mem_used_bytes),
                    g.name,
                )
            })
            .collect()
    }

    /// Free bytes of GPU `index`, if it exists.
    pub fn gpu_free_bytes(&self, index: u32) -> Option<u64> {
        if let Gpus::Nvml(nvml) = &self.gpus {
            let dev = nvml.device_by_index(index).ok()?;
            return dev.memory_info().ok().map(|m| m.free);
        }
        self.gpu_free()
            .into_iter()
            .find(|g| g.0 == index)
            .map(|g| g.1)
    }

    /// RAM that can be given to new processes, in bytes: the node's available memory, within
    /// `RBEE_AGENT_MEMORY_LIMIT` less what the agent's workers hold when that is set.
    pub fn available_memory(&mut self) -> u64 {
        self.sys.refresh_memory();
        let node = self.sys.available_memory();
        match self.memory_limit {
            None => node,
            Some(limit) => node.min(limit.saturating_sub(children_rss())),
        }
    }

    /// The limit from `RBEE_AGENT_MEMORY_LIMIT`, when set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
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
        let (gpus, gpu_status) = match &self.gpus {
            Gpus::Absent(e) => (Vec::new(), e.clone()),
            Gpus::Recorded(f) => match recorded(f) {
                Ok(g) => {
                    let status = format!("{} GPU(s) (recorded sample)", g.len());
                    (g, status)
                }
                Err(e) => (Vec::new(), e),
            },
            Gpus::Nvml(nvml) => match gpus(nvml, workers) {
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
            backends: self.backends.clone(),
        }
    }
}

/// Resident bytes of this process's children (its workers), from `/proc`.
fn children_rss() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter_map(rbee_host::proc::rss_bytes)
        .sum()
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

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 1.5g "), Some(3 << 29));
        assert_eq!(parse_bytes("2T"), Some(2 << 40));
        for bad in ["", "G", "-1", "1X", "ten", "NaN"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_recorded_sample_stands_for_nvml() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gpus.json");
        let g = |index, used| GpuTelemetry {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            mem_total_bytes: 80 << 30,
            mem_used_bytes: used,
            ..GpuTelemetry::default()
        };
        std::fs::write(
            &f,
            serde_json::to_string(&[g(0, 70 << 30), g(1, 10 << 30)]).unwrap(),
        )
        .unwrap();
        let mut c = Collector::new(dir.path().to_path_buf());
        c.gpus = Gpus::Recorded(f.clone());
        assert!(c.has_gpu());
        assert_eq!(c.gpu_free_bytes(1), Some(70 << 30));
        assert_eq!(c.gpu_free_bytes(2), None);
        let t = c.sample(&HashMap::new());
        assert_eq!(t.gpus.len(), 2);
        assert_eq!(t.gpu_status, "2 GPU(s) (recorded sample)");
        std::fs::write(&f, "not json").unwrap();
        let t = c.sample(&HashMap::new());
        assert!(t.gpus.is_empty());
        assert!(
            t.gpu_status.contains("is not a GPU sample"),
            "{}",
            t.gpu_status
        );
    }
}
