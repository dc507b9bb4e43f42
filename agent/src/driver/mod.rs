//! How workloads run. Each driver starts one run of a server in the cgroup (and network
//! namespace) the supervisor made for it, and knows how to ask it to stop:
//! - `exec`: a process as an unprivileged user, in its own session, logging to a per-server
//!   file (development and tests);
//! - `vm`: a QEMU virtual machine, controlled through QMP;
//! - `container`: an OCI container run by an OCI runtime.
//!
//! The supervisor owns the lifecycle (cgroups, networks, the state file, re-adoption) and
//! calls a driver through [`Driver`]; a driver never touches another server's files.

pub mod container;
mod exec;
mod proc;
pub mod vm;

pub use exec::{ExecDriver, ExecSpec, RunAs, Yielding, spawn};
pub use proc::{
    ProcessIdentity, alive, kill_group, others_can_execute, running_as_root, terminate_group,
};

use crate::network::GuestNet;
use backfill_shared::{
    DriverKind, GpuDevice, GuestProfile, PerfFactor, Resources, ServerClass, ServerId, Workload,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("workload command is empty")]
    EmptyCommand,
    /// The workload is not one this driver runs, or names what this host does not have.
    #[error("{0}")]
    Unsupported(String),
    /// The driver's own machinery failed (QMP, the OCI runtime, the registry), saying how.
    #[error("{0}")]
    Failed(String),
}

/// Everything a driver is given to start one run of a server.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub server: ServerId,
    /// What to run (the host's default command already filled in for a server that names
    /// none).
    pub workload: &'a Workload,
    /// What the server was sold: `vcpus` is its `smp`, `mem_bytes` its full memory.
    pub resources: Resources,
    /// Its downsizing at start.
    pub perf_factor: PerfFactor,
    pub class: ServerClass,
    /// The workload's environment, GPU variables included (exec and container).
    pub env: &'a BTreeMap<String, String>,
    /// The GPUs given to it (their PCI bus ids are what a VM passes through).
    pub gpus: &'a [GpuDevice],
    /// `cgroup.procs` files the started process must join before it runs anything.
    pub join_files: &'a [PathBuf],
    /// Its cgroup's path below each hierarchy's root (`/backfill/<uuid>`), for runtimes that
    /// take a `cgroupsPath`. `None` without cgroups.
    pub cgroup_path: Option<String>,
    /// Where its output (a VM's serial console) goes.
    pub log_file: &'a Path,
    /// Its network namespace (isolated mode).
    pub network: Option<&'a GuestNet>,
    /// Who the guest is (host name, account), as the metadata service tells it.
    pub guest: &'a GuestProfile,
    pub run_as: Option<RunAs>,
}

/// A started run: the process the supervisor watches (its exit ends the run) and, when this
/// agent process is its parent, the child to reap.
#[derive(Debug)]
pub struct Launched {
    pub process: ProcessIdentity,
    pub child: Option<Child>,
}

/// How a server's memory is held to its perf_factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryControl {
    /// By its cgroup (soft limit first, hard limit never below its use).
    Cgroup,
    /// By the driver (a VM's balloon): the cgroup's limit stays at the full size plus this
    /// many bytes of overhead, and [`Driver::resize_memory`] does the squeezing.
    Driver { overhead_bytes: u64 },
}

/// One way of running workloads. Methods other than `launch` must be cheap and must not fail
/// loudly: they are called from the supervisor's loop, for runs that may already be gone.
pub trait Driver: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> DriverKind;

    /// Starts one run. On error nothing of this run is left behind (the supervisor removes the
    /// cgroup and the network).
    fn launch(&self, launch: &Launch<'_>) -> Result<Launched, DriverError>;

    /// Asks the run to stop by itself (SIGTERM; a VM's ACPI power button). Repeated about once
    /// a second during a graceful shutdown.
    fn request_shutdown(&self, server: &ServerId, process: &ProcessIdentity);

    /// The run is about to be killed (stopped, or terminated at its time): a last, short
    /// chance to end cleanly (a VM's QMP `quit`, which flushes its disk). Bounded by the
    /// driver to a few seconds; the supervisor kills the run's process group right after.
    fn stop(&self, _server: &ServerId, _process: &ProcessIdentity) {}

    /// The run ended or was killed (its cgroup is empty): release what the driver held for it
    /// (control sockets, the runtime's record of it). The server's disk stays.
    fn release(&self, _server: &ServerId) {}

    /// A run a previous agent process started is this agent's again (its network, if any,
    /// already restored): rebuild what the driver keeps beside it (a VM's bridge and DHCP
    /// responder). Also called when a running guest's network had to be rebuilt.
    fn adopt(&self, _server: &ServerId, _network: Option<&GuestNet>) {}

    fn memory_control(&self) -> MemoryControl {
        MemoryControl::Cgroup
    }

    /// Sets the memory the guest may use ([`MemoryControl::Driver`] only).
    fn resize_memory(&self, _server: &ServerId, _bytes: u64) -> Result<(), DriverError> {
        Ok(())
    }

    /// The memory the guest has now, as the driver sees it (a balloon's actual size), when the
    /// driver controls it.
    fn memory_in_force(&self, _server: &ServerId) -> Option<u64> {
        None
    }

    /// Removes what this host keeps for servers other than `keep` between runs (VM disk
    /// overlays): called with every server the coordinator still wants here or wants kept.
    fn sweep(&self, _keep: &[ServerId]) {}

    /// Fills in this driver's part of the host's inventory (re-read at every hello: a VM
    /// image added to the image directory shows up at the next reconnect).
    fn report(&self, into: &mut backfill_shared::Drivers);
}

/// The drivers this agent has, by kind.
#[derive(Debug, Default, Clone)]
pub struct DriverSet {
    drivers: BTreeMap<DriverKind, std::sync::Arc<dyn Driver>>,
}

impl DriverSet {
    pub fn new() -> DriverSet {
        DriverSet::default()
    }

    pub fn with(mut self, driver: std::sync::Arc<dyn Driver>) -> DriverSet {
        self.drivers.insert(driver.kind(), driver);
        self
    }

    pub fn get(&self, kind: DriverKind) -> Option<&std::sync::Arc<dyn Driver>> {
        self.drivers.get(&kind)
    }

    pub fn kinds(&self) -> Vec<DriverKind> {
        self.drivers.keys().copied().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &std::sync::Arc<dyn Driver>> {
        self.drivers.values()
    }

    /// The inventory's `drivers`: what each driver here reports.
    pub fn inventory(&self) -> backfill_shared::Drivers {
        let mut d = backfill_shared::Drivers::default();
        for driver in self.drivers.values() {
            driver.report(&mut d);
        }
        d
    }
}
