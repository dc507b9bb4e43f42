//! In-memory [`CgroupManager`]s: [`NoCgroups`] for running without root (nothing enforced) and
//! [`RecordingCgroups`] for unit tests of the driver.

use super::{CgroupError, CgroupLimits, CgroupManager, DeviceControl, DeviceRule};
use backfill_shared::ServerId;
use backfill_shared::protocol::ServerUsage;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(id: &ServerId) -> CgroupError {
    CgroupError::NotFound {
        id: *id,
        path: PathBuf::from(format!("(in memory)/{id}")),
    }
}

/// No cgroups: nothing is enforced. The limits the agent meant to apply are kept in memory so
/// [`CgroupManager::read_limits`] (and so the reports) still show them. `procs` is always empty
/// and `kill_all` does nothing: the driver must signal its own child.
#[derive(Debug, Default)]
pub struct NoCgroups {
    limits: Mutex<BTreeMap<ServerId, CgroupLimits>>,
}

impl NoCgroups {
    pub fn new() -> NoCgroups {
        NoCgroups::default()
    }
}

impl CgroupManager for NoCgroups {
    fn describe(&self) -> String {
        "none (limits not enforced)".into()
    }
    fn enforcing(&self) -> bool {
        false
    }
    fn create(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        lock(&self.limits).insert(*id, *limits);
        Ok(())
    }
    fn set_limits(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        match lock(&self.limits).get_mut(id) {
            Some(l) => {
                *l = *limits;
                Ok(())
            }
            None => Err(not_found(id)),
        }
    }
    fn read_limits(&self, id: &ServerId) -> Result<CgroupLimits, CgroupError> {
        lock(&self.limits)
            .get(id)
            .copied()
            .ok_or_else(|| not_found(id))
    }
    fn join_files(&self, _id: &ServerId) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(Vec::new())
    }
    fn procs(&self, _id: &ServerId) -> Result<Vec<u32>, CgroupError> {
        Ok(Vec::new())
    }
    fn usage(&self, _id: &ServerId) -> Result<ServerUsage, CgroupError> {
        Ok(ServerUsage::default())
    }
    fn kill_all(&self, _id: &ServerId) -> Result<(), CgroupError> {
        Ok(())
    }
    fn remove(&self, id: &ServerId) -> Result<(), CgroupError> {
        lock(&self.limits).remove(id);
        Ok(())
    }
    fn list(&self) -> Result<Vec<ServerId>, CgroupError> {
        Ok(lock(&self.limits).keys().copied().collect())
    }
}

/// A state-changing call made on a [`RecordingCgroups`] (reads are not recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Create(ServerId, CgroupLimits),
    SetLimits(ServerId, CgroupLimits),
    KillAll(ServerId),
    Remove(ServerId),
}

#[derive(Debug, Clone)]
struct FakeCgroup {
    limits: CgroupLimits,
    procs: BTreeSet<u32>,
    usage: ServerUsage,
    devices: Vec<DeviceRule>,
    oom_kills: u64,
    /// What `stall_usec` says: (cpu, memory).
    stall: [Option<u64>; 2],
}

#[derive(Debug, Default)]
struct State {
    cgroups: BTreeMap<ServerId, FakeCgroup>,
    calls: Vec<Call>,
    fail: BTreeSet<&'static str>,
}

impl State {
    /// Fails (once) if a test asked `op` to fail.
    fn check(&mut self, op: &'static str) -> Result<(), CgroupError> {
        if self.fail.remove(op) {
            Err(CgroupError::Injected(op))
        } else {
            Ok(())
        }
    }
}

/// In-memory cgroups for unit tests: records every state-changing call (attempts that failed
/// included) and keeps each cgroup's limits, processes and usage. Same rules as the real thing:
/// limits are validated, `set_limits`/`read_limits`/`join_files` need an existing cgroup, and
/// `remove` fails while processes remain (`kill_all` empties them).
///
/// Clones share their state: give one to the code under test and inspect the other.
#[derive(Debug, Default, Clone)]
pub struct RecordingCgroups {
    state: Arc<Mutex<State>>,
}

impl RecordingCgroups {
    pub fn new() -> RecordingCgroups {
        RecordingCgroups::default()
    }

    /// The state-changing calls so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut lock(&self.state).calls)
    }

    /// The limits of an existing cgroup.
    pub fn limits(&self, id: &ServerId) -> Option<CgroupLimits> {
        lock(&self.state).cgroups.get(id).map(|c| c.limits)
    }

    /// The device rules written for an existing cgroup, oldest first.
    pub fn device_rules(&self, id: &ServerId) -> Option<Vec<DeviceRule>> {
        lock(&self.state).cgroups.get(id).map(|c| c.devices.clone())
    }

    /// Pretends `pid` runs in the cgroup (ignored if the cgroup does not exist).
    pub fn add_proc(&self, id: &ServerId, pid: u32) {
        if let Some(c) = lock(&self.state).cgroups.get_mut(id) {
            c.procs.insert(pid);
        }
    }

    /// Sets what `usage` reports for the cgroup (ignored if it does not exist).
    pub fn set_usage(&self, id: &ServerId, usage: ServerUsage) {
        if let Some(c) = lock(&self.state).cgroups.get_mut(id) {
            c.usage = usage;
        }
    }

    /// Sets what `stall_usec` reports for the cgroup's `r` (ignored if it does not exist).
    pub fn set_stall(&self, id: &ServerId, r: crate::pressure::Resource, usec: Option<u64>) {
        if let Some(c) = lock(&self.state).cgroups.get_mut(id) {
            c.stall[usize::from(r == crate::pressure::Resource::Memory)] = usec;
        }
    }

    /// Pretends the kernel's OOM killer killed `n` of the cgroup's processes.
    pub fn set_oom_kills(&self, id: &ServerId, n: u64) {
        if let Some(c) = lock(&self.state).cgroups.get_mut(id) {
            c.oom_kills = n;
        }
    }

    /// Makes the next call of `op` fail with [`CgroupError::Injected`]. `op` is a method name:
    /// "create", "set_limits", "read_limits", "join_files", "procs", "usage", "kill_all",
    /// "remove", "list" or "restrict_devices".
    pub fn fail_next(&self, op: &'static str) {
        lock(&self.state).fail.insert(op);
    }
}

impl CgroupManager for RecordingCgroups {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn enforcing(&self) -> bool {
        false
    }
    fn create(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let mut s = lock(&self.state);
        s.calls.push(Call::Create(*id, *limits));
        s.check("create")?;
        limits.validate()?;
        s.cgroups
            .entry(*id)
            .and_modify(|c| c.limits = *limits)
            .or_insert_with(|| FakeCgroup {
                limits: *limits,
                procs: BTreeSet::new(),
                usage: ServerUsage::default(),
                devices: Vec::new(),
                oom_kills: 0,
                stall: [None, None],
            });
        Ok(())
    }
    fn set_limits(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let mut s = lock(&self.state);
        s.calls.push(Call::SetLimits(*id, *limits));
        s.check("set_limits")?;
        limits.validate()?;
        let c = s.cgroups.get_mut(id).ok_or_else(|| not_found(id))?;
        // As the kernel does for [`super::FsCgroups`]: a hard memory limit is held just above
        // the usage until the usage comes down.
        c.limits = CgroupLimits {
            mem_limit_bytes: super::hard_limit_now(limits.mem_limit_bytes, c.usage.mem_usage_bytes),
            ..*limits
        };
        Ok(())
    }
    fn read_limits(&self, id: &ServerId) -> Result<CgroupLimits, CgroupError> {
        let mut s = lock(&self.state);
        s.check("read_limits")?;
        s.cgroups
            .get(id)
            .map(|c| c.limits)
            .ok_or_else(|| not_found(id))
    }
    fn join_files(&self, id: &ServerId) -> Result<Vec<PathBuf>, CgroupError> {
        let mut s = lock(&self.state);
        s.check("join_files")?;
        match s.cgroups.contains_key(id) {
            true => Ok(Vec::new()),
            false => Err(not_found(id)),
        }
    }
    fn procs(&self, id: &ServerId) -> Result<Vec<u32>, CgroupError> {
        let mut s = lock(&self.state);
        s.check("procs")?;
        Ok(s.cgroups
            .get(id)
            .map(|c| c.procs.iter().copied().collect())
            .unwrap_or_default())
    }
    fn usage(&self, id: &ServerId) -> Result<ServerUsage, CgroupError> {
        let mut s = lock(&self.state);
        s.check("usage")?;
        Ok(s.cgroups.get(id).map(|c| c.usage).unwrap_or_default())
    }
    fn oom_kills(&self, id: &ServerId) -> Result<u64, CgroupError> {
        Ok(lock(&self.state).cgroups.get(id).map_or(0, |c| c.oom_kills))
    }
    fn stall_usec(
        &self,
        id: &ServerId,
        r: crate::pressure::Resource,
    ) -> Result<Option<u64>, CgroupError> {
        let i = usize::from(r == crate::pressure::Resource::Memory);
        Ok(lock(&self.state).cgroups.get(id).and_then(|c| c.stall[i]))
    }
    fn kill_all(&self, id: &ServerId) -> Result<(), CgroupError> {
        let mut s = lock(&self.state);
        s.calls.push(Call::KillAll(*id));
        s.check("kill_all")?;
        if let Some(c) = s.cgroups.get_mut(id) {
            c.procs.clear();
        }
        Ok(())
    }
    fn remove(&self, id: &ServerId) -> Result<(), CgroupError> {
        let mut s = lock(&self.state);
        s.calls.push(Call::Remove(*id));
        s.check("remove")?;
        if let Some(c) = s.cgroups.get(id)
            && !c.procs.is_empty()
        {
            return Err(CgroupError::Busy {
                path: PathBuf::from(format!("(in memory)/{id}")),
                pids: c.procs.iter().copied().collect(),
            });
        }
        s.cgroups.remove(id);
        Ok(())
    }
    fn list(&self) -> Result<Vec<ServerId>, CgroupError> {
        let mut s = lock(&self.state);
        s.check("list")?;
        Ok(s.cgroups.keys().copied().collect())
    }
    /// Records the rules (as if enforced).
    fn restrict_devices(
        &self,
        id: &ServerId,
        rules: &[DeviceRule],
    ) -> Result<DeviceControl, CgroupError> {
        let mut s = lock(&self.state);
        s.check("restrict_devices")?;
        let c = s.cgroups.get_mut(id).ok_or_else(|| not_found(id))?;
        c.devices.extend_from_slice(rules);
        Ok(DeviceControl::Enforced)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cgroups::{CpuPolicy, limits_for};
    use backfill_shared::{PerfFactor, Resources, ServerClass};

    fn limits(perf: f64) -> CgroupLimits {
        let r = Resources {
            cpu_mhz: 2000,
            vcpus: 2,
            mem_bytes: 1 << 30,
        };
        limits_for(
            &r,
            PerfFactor {
                cpu: perf,
                mem: perf,
            },
            ServerClass::Backfill,
            &CpuPolicy::default(),
        )
    }

    #[test]
    fn recording_records_and_keeps_limits() {
        let cg = RecordingCgroups::new();
        let (a, b) = (ServerId::from_u128(1), ServerId::from_u128(2));
        assert_eq!(cg.describe(), "fake");
        assert!(!cg.enforcing());
        cg.create(&a, &limits(1.0)).unwrap();
        cg.create(&b, &limits(1.0)).unwrap();
        cg.set_limits(&a, &limits(0.5)).unwrap();
        assert_eq!(cg.read_limits(&a).unwrap(), limits(0.5));
        assert_eq!(cg.limits(&b), Some(limits(1.0)));
        assert_eq!(cg.list().unwrap(), vec![a, b]);
        assert!(cg.join_files(&a).unwrap().is_empty());
        cg.add_proc(&a, 42);
        let u = ServerUsage {
            cpu_usage_usec: 5,
            mem_usage_bytes: 6,
            cpu_throttled_usec: 7,
        };
        cg.set_usage(&a, u);
        assert_eq!(cg.usage(&a).unwrap(), u);
        assert_eq!(cg.procs(&a).unwrap(), vec![42]);
        assert!(matches!(cg.remove(&a), Err(CgroupError::Busy { .. })));
        cg.kill_all(&a).unwrap();
        cg.remove(&a).unwrap();
        cg.remove(&a).unwrap();
        assert!(matches!(
            cg.read_limits(&a),
            Err(CgroupError::NotFound { .. })
        ));
        assert!(matches!(
            cg.set_limits(&a, &limits(1.0)),
            Err(CgroupError::NotFound { .. })
        ));
        assert!(cg.procs(&a).unwrap().is_empty());
        assert_eq!(
            cg.take_calls(),
            vec![
                Call::Create(a, limits(1.0)),
                Call::Create(b, limits(1.0)),
                Call::SetLimits(a, limits(0.5)),
                Call::Remove(a),
                Call::KillAll(a),
                Call::Remove(a),
                Call::Remove(a),
                Call::SetLimits(a, limits(1.0)),
            ]
        );
        assert!(cg.calls().is_empty());
    }

    #[test]
    fn recording_clones_share_state() {
        let cg = RecordingCgroups::new();
        let given = cg.clone();
        let a = ServerId::from_u128(1);
        given.create(&a, &limits(1.0)).unwrap();
        assert_eq!(cg.calls(), vec![Call::Create(a, limits(1.0))]);
        assert_eq!(cg.list().unwrap(), vec![a]);
    }

    #[test]
    fn recording_validates_and_injects_failures() {
        let cg = RecordingCgroups::new();
        let a = ServerId::from_u128(1);
        let bad = CgroupLimits {
            cpu_quota_us: Some(1),
            ..CgroupLimits::UNLIMITED
        };
        assert!(matches!(
            cg.create(&a, &bad),
            Err(CgroupError::BadLimits { .. })
        ));
        assert!(cg.list().unwrap().is_empty());
        cg.fail_next("create");
        assert!(matches!(
            cg.create(&a, &limits(1.0)),
            Err(CgroupError::Injected("create"))
        ));
        cg.create(&a, &limits(1.0)).unwrap();
        assert_eq!(cg.calls().len(), 3);
        cg.fail_next("list");
        assert!(cg.list().is_err());
        assert_eq!(cg.list().unwrap(), vec![a]);
    }

    #[test]
    fn no_cgroups_keeps_intended_limits() {
        let cg = NoCgroups::new();
        let a = ServerId::from_u128(7);
        assert_eq!(cg.describe(), "none (limits not enforced)");
        assert!(!cg.enforcing());
        assert!(matches!(
            cg.set_limits(&a, &limits(1.0)),
            Err(CgroupError::NotFound { .. })
        ));
        cg.create(&a, &limits(1.0)).unwrap();
        cg.set_limits(&a, &limits(0.25)).unwrap();
        assert_eq!(cg.read_limits(&a).unwrap(), limits(0.25));
        assert!(cg.join_files(&a).unwrap().is_empty());
        assert!(cg.procs(&a).unwrap().is_empty());
        assert_eq!(cg.usage(&a).unwrap(), ServerUsage::default());
        cg.kill_all(&a).unwrap();
        assert_eq!(cg.list().unwrap(), vec![a]);
        cg.remove(&a).unwrap();
        assert!(cg.list().unwrap().is_empty());
        assert!(cg.read_limits(&a).is_err());
    }
}
