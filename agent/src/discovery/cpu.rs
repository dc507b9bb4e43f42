//! CPUs, clock, memory and hostname through sysinfo.

use super::{DiscoveryError, GpuBackend};
use backfill_shared::HostInventory;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};

/// The clock assumed when neither sysinfo nor /proc/cpuinfo gives one.
pub const FALLBACK_CPU_MHZ: u64 = 1000;
const CPUINFO: &str = "/proc/cpuinfo";

/// CPU count, per-CPU MHz and total memory via sysinfo, the hostname, and the GPUs of `gpus`.
///
/// The clock is the highest current frequency sysinfo reports over the CPUs; where that is 0
/// (some VMs), the highest "cpu MHz" of /proc/cpuinfo; else [`FALLBACK_CPU_MHZ`] with a warning.
pub fn discover(gpus: &dyn GpuBackend) -> Result<HostInventory, DiscoveryError> {
    let mut sys = System::new().map_err(|source| DiscoveryError::System {
        what: "initialising sysinfo",
        source,
    })?;
    sys.refresh_cpu_list(CpuRefreshKind::nothing().with_frequency());
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let cpus = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
    if cpus == 0 {
        return Err(DiscoveryError::Implausible("no CPUs found"));
    }
    let mem_bytes = sys.total_memory();
    if mem_bytes == 0 {
        return Err(DiscoveryError::Implausible("0 bytes of memory found"));
    }
    let sysinfo_mhz = sys.cpus().iter().map(|c| c.frequency()).max().unwrap_or(0);
    let cpu_mhz_per_cpu = match sysinfo_mhz {
        0 => mhz_fallback(),
        mhz => mhz,
    };
    let hostname = System::host_name()
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    Ok(HostInventory {
        hostname,
        cpus,
        cpu_mhz_per_cpu,
        mem_bytes,
        gpus: gpus.devices()?,
        drivers: backfill_shared::Drivers::exec_only(),
        mechanisms: Vec::new(),
    })
}

fn mhz_fallback() -> u64 {
    match std::fs::read_to_string(CPUINFO) {
        Ok(s) => match cpu_mhz_from_cpuinfo(&s) {
            Some(mhz) => return mhz,
            None => tracing::warn!(
                "no CPU clock from sysinfo or {CPUINFO}: assuming {FALLBACK_CPU_MHZ} MHz per CPU"
            ),
        },
        Err(e) => tracing::warn!(
            "no CPU clock from sysinfo and reading {CPUINFO} failed ({e}): assuming \
             {FALLBACK_CPU_MHZ} MHz per CPU"
        ),
    }
    FALLBACK_CPU_MHZ
}

/// The highest "cpu MHz" in /proc/cpuinfo contents, rounded to the nearest MHz; None if there is
/// no such line with a positive value.
pub fn cpu_mhz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            if !key.trim().eq_ignore_ascii_case("cpu mhz") {
                return None;
            }
            let mhz: f64 = value.trim().parse().ok()?;
            (mhz.is_finite() && mhz >= 0.5).then(|| mhz.round() as u64)
        })
        .max()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::discovery::FakeGpus;
    use backfill_shared::GpuDevice;

    #[test]
    fn cpuinfo_mhz() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                   cpu MHz\t\t: 2445.406\ncache size\t: 512 KB\n\nprocessor\t: 1\n\
                   cpu MHz\t\t: 2999.6\nbogomips\t: 4890.81\n";
        assert_eq!(cpu_mhz_from_cpuinfo(x86), Some(3000));
        assert_eq!(
            cpu_mhz_from_cpuinfo("processor : 0\nCPU MHz : 1200.000\n"),
            Some(1200)
        );
        // ARM: no MHz line; garbage and zero are not clocks.
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n";
        assert_eq!(cpu_mhz_from_cpuinfo(arm), None);
        assert_eq!(
            cpu_mhz_from_cpuinfo("cpu MHz : fast\ncpu MHz : 0.000\n"),
            None
        );
        assert_eq!(cpu_mhz_from_cpuinfo("cpu MHz : NaN\ncpu MHz : inf\n"), None);
        assert_eq!(cpu_mhz_from_cpuinfo(""), None);
    }

    #[test]
    fn discover_this_host() {
        let gpu = GpuDevice::whole(0, "GPU-0000", "Fake GPU", 80 << 30, "00000000:01:00.0");
        let inv = discover(&FakeGpus::from_devices(vec![gpu.clone()])).unwrap();
        assert!(inv.cpus >= 1, "{inv:?}");
        assert!(inv.mem_bytes > 0, "{inv:?}");
        assert!(inv.cpu_mhz_per_cpu > 0, "{inv:?}");
        assert!(!inv.hostname.is_empty());
        assert_eq!(inv.gpus, vec![gpu]);
        eprintln!("discovered {inv:?}");
    }
}
