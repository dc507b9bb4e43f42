//! The `vm` driver: a QEMU virtual machine per server run.
//!
//! - **Process**: QEMU is started by the agent like any workload (in the server's cgroup and
//!   network namespace, with its class's scheduling, see [`crate::driver::spawn`]) but as
//!   root, with `-runas <run_as uid:gid>`: it opens `/dev/kvm`, the tap, its disk and its
//!   sockets first, then drops to the workload user before the guest runs. So the tap and the
//!   files under `state_dir` need no ownership games, and KVM needs no `kvm` group.
//! - **Disk**: a qcow2 overlay per server on an image of `[vm] images_dir`, under
//!   `<state_dir>/vm/<uuid>/disk.qcow2`, kept across stop and start, removed by
//!   [`Driver::sweep`] once the coordinator no longer keeps the server here; or a kernel
//!   booted directly (`kernel`, `initrd`, `cmdline`).
//! - **Network**: in the server's namespace a bridge `br0` joins `eth0` (the veth end, whose
//!   address moves to the guest) and `tap0`; the guest gets exactly its address, with the
//!   host end as router, from a DHCP responder on that bridge ([`companion`]).
//! - **Control**: QMP on `<state_dir>/vm/<uuid>/qmp.sock`: `system_powerdown` (ACPI) for a
//!   graceful shutdown, `balloon`/`query-balloon` for memory.
//! - **Memory**: a virtio balloon ([`MemoryControl::Driver`]); the cgroup allows the guest's
//!   full size plus `[vm] memory_overhead_mib` for QEMU itself (TCG's translation cache is
//!   capped at [`argv::TCG_TB_MIB`]).
//! - **Console**: the serial port appends to the server's log file, rotated at
//!   `[vm] console_log_max_mib`.

mod accel;
mod argv;
mod companion;
mod config;
mod dhcp;
mod netns;
mod qmp;

pub use config::{Accel, VmConfig};

use super::{
    Driver, DriverError, ExecSpec, Launch, Launched, MemoryControl, ProcessIdentity, Yielding,
};
use crate::images::{self, ImageError};
use crate::network::GuestNet;
use backfill_shared::{DriverKind, ServerId};
use companion::Companion;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long QEMU has to answer on QMP after it starts.
const READY_DEADLINE: Duration = Duration::from_secs(30);
const QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// Repeated once a second during a graceful shutdown: a hung QEMU must not hold the loop.
const POWERDOWN_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a stopped VM has to exit after QMP `quit` before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An image the VM names is not usable here.
    #[error("{0}")]
    Image(String),
    /// The VM's namespace plumbing failed.
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
}

impl From<ImageError> for VmError {
    fn from(e: ImageError) -> VmError {
        match e {
            ImageError::Unusable(m) => VmError::Image(m),
            ImageError::Io { path, source } => VmError::Io { path, source },
        }
    }
}

impl From<VmError> for DriverError {
    fn from(e: VmError) -> DriverError {
        match e {
            VmError::Image(m) => DriverError::Unsupported(m),
            VmError::Io { path, source } => DriverError::Io { path, source },
            other => DriverError::Failed(other.to_string()),
        }
    }
}

/// What a run needs after an agent restart, in `<state_dir>/vm/<uuid>/run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    log_file: PathBuf,
    mac: [u8; 6],
}

#[derive(Debug)]
pub struct VmDriver {
    cfg: VmConfig,
    /// `<state_dir>/vm`.
    dir: PathBuf,
    /// `<state_dir>/drives`: the host's drives (see [`crate::drives`]).
    drives_dir: PathBuf,
    accel: &'static str,
    runs: Mutex<BTreeMap<ServerId, Companion>>,
}

impl VmDriver {
    /// The driver when this host can run VMs: QEMU is there and so is the image directory.
    /// Probes the accelerator (once). `None`, with a warning logged, when it cannot.
    pub fn detect(cfg: &VmConfig, state_dir: &Path) -> Option<VmDriver> {
        if !cfg.enabled {
            return None;
        }
        if !cfg.qemu.is_file() {
            tracing::warn!(qemu = %cfg.qemu.display(), "no QEMU: the vm driver is not offered (install qemu-system-x86 or set [vm] qemu)");
            return None;
        }
        if !cfg.images_dir.is_dir() {
            tracing::warn!(images_dir = %cfg.images_dir.display(), "no image directory: the vm driver is not offered (create it, put images in it, restart the agent)");
            return None;
        }
        let dir = state_dir.join("vm");
        let kernel = accel::probe_kernel(&cfg.images_dir);
        let chosen = accel::choose(cfg.accel, Path::new("/dev/kvm").exists(), || {
            accel::probe(&cfg.qemu, "kvm", kernel.as_deref(), &dir)
        });
        if let Some(w) = &chosen.warning {
            tracing::warn!("{w}");
        }
        tracing::info!(accel = chosen.accel, qemu = %cfg.qemu.display(), images_dir = %cfg.images_dir.display(), "vm driver ready");
        Some(VmDriver {
            cfg: cfg.clone(),
            drives_dir: state_dir.join("drives"),
            dir,
            accel: chosen.accel,
            runs: Mutex::new(BTreeMap::new()),
        })
    }

    fn server_dir(&self, id: &ServerId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn qmp_path(&self, id: &ServerId) -> PathBuf {
        self.server_dir(id).join("qmp.sock")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
        move |source| VmError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Starts the companion thread of a running VM (DHCP, balloon, console log).
    fn start_companion(
        &self,
        id: &ServerId,
        net: &GuestNet,
        record: &RunRecord,
    ) -> Result<(), VmError> {
        let (socket, bridge_mac) = netns::dhcp_socket(&net.netns_path())?;
        let c = Companion::start(companion::Setup {
            server: *id,
            socket,
            bridge_mac,
            lease: dhcp::Lease {
                mac: record.mac,
                address: net.address,
                router: net.host_address,
                prefix: 30,
            },
            qmp: self.qmp_path(id),
            log_file: record.log_file.clone(),
            log_max_bytes: self.cfg.console_log_max_mib << 20,
        })
        .map_err(|e| VmError::Setup(format!("cannot start the VM's companion thread: {e}")))?;
        if let Ok(mut runs) = self.runs.lock() {
            runs.insert(*id, c);
        }
        Ok(())
    }

    fn prepare(&self, l: &Launch<'_>) -> Result<argv::QemuPlan, VmError> {
        let vm = l.workload.vm.as_ref().ok_or_else(|| {
            VmError::Image("the vm driver runs workloads that name a \"vm\"".into())
        })?;
        let net = l.network.ok_or_else(|| {
            VmError::Setup("a vm needs its own network namespace (isolated mode)".into())
        })?;
        let find = |n: &Option<String>| {
            n.as_deref()
                .map(|n| images::resolve(&self.cfg.images_dir, n))
                .transpose()
        };
        let (image, kernel, initrd) = (find(&vm.image)?, find(&vm.kernel)?, find(&vm.initrd)?);
        let dir = self.server_dir(&l.server);
        std::fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        let disk = match (&image, &vm.image) {
            (Some(path), Some(name)) => {
                let overlay = dir.join("disk.qcow2");
                images::ensure_overlay(&self.cfg.qemu_img, path, name, &overlay)?;
                Some(overlay)
            }
            _ => None,
        };
        let drives = backfill_shared::drive::boot_sequence(&vm.drives)
            .into_iter()
            .map(|d| {
                let path = self.drives_dir.join(format!("{}.qcow2", d.drive));
                if path.is_file() {
                    Ok((path, d.media, d.device))
                } else {
                    Err(VmError::Image(format!(
                        "drive {} is not on this host (drives live on the host that made them)",
                        d.drive
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        netns::plumb(&net.netns)?;
        let record = RunRecord {
            log_file: l.log_file.to_owned(),
            mac: argv::mac_for(&l.server),
        };
        let rec_path = dir.join("run.json");
        let json = serde_json::to_vec(&record).map_err(|e| VmError::Setup(e.to_string()))?;
        std::fs::write(&rec_path, json).map_err(Self::io(&rec_path))?;
        let qmp = self.qmp_path(&l.server);
        let _ = std::fs::remove_file(&qmp);
        Ok(argv::QemuPlan {
            qemu: self.cfg.qemu.clone(),
            accel: self.accel,
            name: l.server.to_string(),
            vcpus: l.resources.vcpus,
            mem_bytes: l.resources.mem_bytes,
            disk,
            drives,
            kernel,
            initrd,
            cmdline: vm.cmdline.clone(),
            mac: record.mac,
            qmp,
            console: l.log_file.to_owned(),
            gpus: l.gpus.iter().map(|g| g.pci_bus_id.clone()).collect(),
            run_as: l.run_as,
        })
    }

    fn record(&self, id: &ServerId) -> Option<RunRecord> {
        let text = std::fs::read(self.server_dir(id).join("run.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(600)..]).into_owned();
    text.trim().replace('\n', " | ")
}

impl Driver for VmDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Vm
    }

    fn launch(&self, l: &Launch<'_>) -> Result<Launched, DriverError> {
        let plan = self.prepare(l)?;
        let argv: Vec<String> = plan
            .argv()
            .map_err(DriverError::Failed)?
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let netns = l.network.map(GuestNet::netns_path);
        let mut child = super::spawn(&ExecSpec {
            server: l.server,
            command: &argv,
            env: &BTreeMap::new(),
            join_files: l.join_files,
            // QEMU drops to run_as itself (-runas), after opening what needs root.
            run_as: None,
            log_file: l.log_file,
            netns: netns.as_deref(),
            yielding: Yielding::for_class(l.class),
        })?;
        let fail = |child: &mut std::process::Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            DriverError::Failed(why)
        };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(DriverError::Failed(format!(
                    "QEMU exited at once ({status}): {}",
                    tail(l.log_file)
                )));
            }
            if qmp::status(&plan.qmp, QMP_TIMEOUT).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(
                    &mut child,
                    format!(
                        "QEMU did not answer on QMP within {} s",
                        READY_DEADLINE.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(process) = ProcessIdentity::of(child.id()) else {
            return Err(fail(&mut child, "QEMU exited at once".into()));
        };
        if let Some(net) = l.network {
            let record = RunRecord {
                log_file: l.log_file.to_owned(),
                mac: plan.mac,
            };
            if let Err(e) = self.start_companion(&l.server, net, &record) {
                return Err(fail(&mut child, e.to_string()));
            }
        }
        tracing::info!(server = %l.server, accel = self.accel, pid = process.pid, "VM started");
        Ok(Launched {
            process,
            child: Some(child),
        })
    }

    fn request_shutdown(&self, server: &ServerId, process: &ProcessIdentity) {
        if !super::alive(process) {
            return;
        }
        if let Err(e) = qmp::execute(
            &self.qmp_path(server),
            "system_powerdown",
            None,
            POWERDOWN_TIMEOUT,
        ) {
            tracing::debug!(server = %server, error = %e, "cannot press the VM's power button");
        }
    }

    fn stop(&self, server: &ServerId, process: &ProcessIdentity) {
        if !super::alive(process) {
            return;
        }
        // `quit` flushes the overlay's metadata; QEMU exits right after answering.
        if let Err(e) = qmp::execute(&self.qmp_path(server), "quit", None, QMP_TIMEOUT) {
            tracing::debug!(server = %server, error = %e, "QMP quit failed; the VM is killed");
            return;
        }
        let deadline = Instant::now() + STOP_WAIT;
        while super::alive(process) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !super::alive(process) {
            tracing::info!(server = %server, "VM quit through QMP");
        }
    }

    fn release(&self, server: &ServerId) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(c) = runs.remove(server)
        {
            c.stop();
        }
        let _ = std::fs::remove_file(self.qmp_path(server));
    }

    fn adopt(&self, server: &ServerId, network: Option<&GuestNet>) {
        let (Some(net), Some(record)) = (network, self.record(server)) else {
            return;
        };
        if let Some(old) = self.runs.lock().ok().and_then(|mut r| r.remove(server)) {
            old.stop();
        }
        let r = netns::plumb(&net.netns).and_then(|()| self.start_companion(server, net, &record));
        match r {
            Ok(()) => {
                tracing::info!(server = %server, "VM re-adopted: bridge checked, DHCP answering again")
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "cannot restore a re-adopted VM's bridge or DHCP")
            }
        }
    }

    fn memory_control(&self) -> MemoryControl {
        MemoryControl::Driver {
            overhead_bytes: self.cfg.memory_overhead_mib << 20,
        }
    }

    fn resize_memory(&self, server: &ServerId, bytes: u64) -> Result<(), DriverError> {
        qmp::set_balloon(&self.qmp_path(server), bytes, QMP_TIMEOUT)
            .map_err(|e| DriverError::Failed(e.to_string()))
    }

    fn memory_in_force(&self, server: &ServerId) -> Option<u64> {
        let runs = self.runs.lock().ok()?;
        let actual = runs
            .get(server)?
            .actual
            .load(std::sync::atomic::Ordering::Relaxed);
        (actual > 0).then_some(actual)
    }

    fn sweep(&self, keep: &[ServerId]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let running: Vec<ServerId> = self
            .runs
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        for e in entries.filter_map(Result::ok) {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ServerId>().ok())
            else {
                continue;
            };
            if keep.contains(&id) || running.contains(&id) {
                continue;
            }
            tracing::info!(server = %id, "removing the disk of a VM no longer kept here");
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(server = %id, error = %err, "cannot remove a VM's disk");
            }
        }
    }

    fn report(&self, into: &mut backfill_shared::Drivers) {
        into.vm = Some(backfill_shared::VmDriver {
            accel: self.accel.to_owned(),
            images: images::list(&self.cfg.images_dir, &self.cfg.qemu_img),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use backfill_shared::{GuestProfile, PerfFactor, Resources, ServerClass, VmWorkload, Workload};
    use std::net::Ipv4Addr;

    fn driver(root: &Path) -> VmDriver {
        let images = root.join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("vmlinuz"), b"k").unwrap();
        VmDriver {
            cfg: VmConfig {
                images_dir: images,
                ..VmConfig::default()
            },
            dir: root.join("vm"),
            drives_dir: root.join("drives"),
            accel: "tcg",
            runs: Mutex::new(BTreeMap::new()),
        }
    }

    fn launch_error(d: &VmDriver, vm: VmWorkload, network: Option<&GuestNet>) -> DriverError {
        let workload = Workload {
            vm: Some(vm),
            ..Workload::default()
        };
        let guest = GuestProfile {
            name: "g".into(),
            hostname: "g".into(),
            account: "a".into(),
            class: ServerClass::Backfill,
            instance_type: "t".into(),
            meta: BTreeMap::new(),
            user_data: None,
        };
        let log = d.dir.join("x.log");
        let l = Launch {
            server: ServerId::from_u128(9),
            workload: &workload,
            resources: Resources {
                cpu_mhz: 1000,
                vcpus: 1,
                mem_bytes: 256 << 20,
            },
            perf_factor: PerfFactor::FULL,
            class: ServerClass::Backfill,
            env: &BTreeMap::new(),
            gpus: &[],
            join_files: &[],
            cgroup_path: None,
            log_file: &log,
            network,
            guest: &guest,
            run_as: None,
        };
        d.launch(&l).unwrap_err()
    }

    #[test]
    fn bad_input_is_a_clear_error_before_anything_runs() {
        let root = tempfile::tempdir().unwrap();
        let d = driver(root.path());
        let net = GuestNet {
            slot: 0,
            address: Ipv4Addr::new(10, 0, 0, 2),
            host_address: Ipv4Addr::new(10, 0, 0, 1),
            netns: "bf-test-none".into(),
            host_if: "bftest-0".into(),
        };
        let unknown = VmWorkload {
            image: Some("missing.qcow2".into()),
            ..VmWorkload::default()
        };
        let e = launch_error(&d, unknown, Some(&net));
        assert!(
            matches!(&e, DriverError::Unsupported(m) if m.contains("missing.qcow2")),
            "{e}"
        );
        let escape = VmWorkload {
            kernel: Some("../vmlinuz".into()),
            ..VmWorkload::default()
        };
        assert!(matches!(
            launch_error(&d, escape, Some(&net)),
            DriverError::Unsupported(_)
        ));
        let no_net = VmWorkload {
            kernel: Some("vmlinuz".into()),
            ..VmWorkload::default()
        };
        let e = launch_error(&d, no_net, None);
        assert!(e.to_string().contains("network namespace"), "{e}");
        // Nothing was left behind for the server.
        assert!(!d.server_dir(&ServerId::from_u128(9)).exists());
    }

    #[test]
    fn no_qemu_or_no_images_means_no_driver() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let cfg = VmConfig {
            qemu: root.path().join("no-qemu"),
            images_dir: images.clone(),
            accel: Accel::Tcg,
            ..VmConfig::default()
        };
        assert!(VmDriver::detect(&cfg, root.path()).is_none());
        let disabled = VmConfig {
            enabled: false,
            ..cfg.clone()
        };
        assert!(VmDriver::detect(&disabled, root.path()).is_none());
        if Path::new("/usr/bin/qemu-system-x86_64").is_file() {
            let no_images = VmConfig {
                qemu: "/usr/bin/qemu-system-x86_64".into(),
                images_dir: root.path().join("none"),
                ..cfg.clone()
            };
            assert!(VmDriver::detect(&no_images, root.path()).is_none());
            let ok = VmConfig {
                qemu: "/usr/bin/qemu-system-x86_64".into(),
                ..cfg
            };
            let d = VmDriver::detect(&ok, root.path()).unwrap();
            let mut inv = backfill_shared::Drivers::default();
            d.report(&mut inv);
            assert_eq!(inv.vm.unwrap().accel, "tcg");
        } else {
            eprintln!("SKIP (part): no /usr/bin/qemu-system-x86_64");
        }
    }

    #[test]
    fn sweep_keeps_what_is_kept_and_running() {
        let root = tempfile::tempdir().unwrap();
        let d = driver(root.path());
        let (a, b) = (ServerId::from_u128(1), ServerId::from_u128(2));
        for id in [a, b] {
            std::fs::create_dir_all(d.server_dir(&id)).unwrap();
        }
        std::fs::create_dir_all(d.dir.join("not-a-uuid")).unwrap();
        d.sweep(&[a]);
        assert!(d.server_dir(&a).exists());
        assert!(!d.server_dir(&b).exists());
        assert!(d.dir.join("not-a-uuid").exists());
        // A stopped or preempted VM's drives are not its overlay: sweeping never touches them.
        std::fs::create_dir_all(&d.drives_dir).unwrap();
        std::fs::write(d.drives_dir.join(format!("{b}.qcow2")), b"drive").unwrap();
        d.sweep(&[]);
        assert!(d.drives_dir.join(format!("{b}.qcow2")).exists());
    }
}
