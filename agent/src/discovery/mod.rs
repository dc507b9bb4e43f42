//! What the host has: CPUs, their clock, memory (sysinfo) and GPUs (NVML, or an inventory file
//! for tests and GPU-less development).

mod cpu;
pub mod gpu;

pub use cpu::{cpu_mhz_from_cpuinfo, discover};
pub use gpu::{
    FakeGpus, GpuBackend, GpuMonitor, GpuScan, NoGpus, NvmlGpus, gpu_backend, run_rescans,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A GPU inventory file that does not parse or does not validate.
    #[error("GPU inventory {path}: {why}")]
    Inventory { path: PathBuf, why: String },
    #[error("NVML: {what}: {source}")]
    Nvml {
        what: String,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("system information: {what}: {source}")]
    System {
        what: &'static str,
        source: sysinfo::Error,
    },
    /// sysinfo found no CPUs or no memory.
    #[error("system information: {0}")]
    Implausible(&'static str),
}
