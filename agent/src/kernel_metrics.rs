//! The kernel's protection of normal servers, as metrics: per server and per class parent
//! (`normal`, `idle`), the CPU quota in cores, the weight, the time throttled, the CPU used
//! and the stall (PSI totals on cgroup v2; v1, CPU: run-queue wait). Registered into the
//! agent's registry by the admin listener's `AgentMetrics` and refreshed at each scrape.

use crate::cgroups::{CgroupClass, CgroupLimits, ClassStats, CpuWeight};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassResourceLabel {
    pub class: String,
    pub resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

/// The per-server and per-class gauges (cheap clones share their values).
#[derive(Debug, Default, Clone)]
pub struct KernelMetrics {
    server_quota_cores: Family<ServerLabel, F64Gauge>,
    class_quota_cores: Family<ClassLabel, F64Gauge>,
    class_weight: Family<ClassLabel, Gauge>,
    class_throttled: Family<ClassLabel, F64Gauge>,
    class_cpu: Family<ClassLabel, F64Gauge>,
    class_stall: Family<ClassResourceLabel, F64Gauge>,
    mechanism: Family<MechanismLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MechanismLabel {
    pub mechanism: String,
}

/// The quota in cores (-1: none).
pub fn quota_cores(l: &CgroupLimits) -> f64 {
    match l.cpu_quota_us {
        Some(q) if l.cpu_period_us > 0 => q as f64 / l.cpu_period_us as f64,
        _ => -1.0,
    }
}

/// The weight as the metrics show it: v2 units, 0 for the idle class.
pub fn weight_value(w: CpuWeight) -> i64 {
    match w {
        CpuWeight::Idle => 0,
        CpuWeight::Weight(w) => i64::try_from(w).unwrap_or(i64::MAX),
    }
}

fn class_label(c: CgroupClass) -> ClassLabel {
    ClassLabel {
        class: c.dir_name().into(),
    }
}

impl KernelMetrics {
    /// One series per mechanism in the inventory (the stall source among them), set to 1.
    pub fn set_mechanisms(&self, mechanisms: &[String]) {
        self.mechanism.clear();
        for m in mechanisms {
            self.mechanism
                .get_or_create(&MechanismLabel {
                    mechanism: m.clone(),
                })
                .set(1);
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kernel_mechanism",
            "1 for each kernel mechanism this agent protects normal servers with, as in its inventory (cgroup-v1/-v2, cpu.idle, sched_idle, memory.*, psi, stall:<source>)",
            self.mechanism.clone(),
        );
        registry.register(
            "cpu_quota_cores",
            "CPU quota in force, in cores (quota / period), by server (-1: unlimited)",
            self.server_quota_cores.clone(),
        );
        registry.register(
            "class_cpu_quota_cores",
            "CPU quota of a class parent (normal, idle), in cores (-1: unlimited)",
            self.class_quota_cores.clone(),
        );
        registry.register(
            "class_cpu_weight",
            "CPU weight of a class parent in cgroup v2 units (v1: cpu.shares x 100 / 1024); 0: the idle class",
            self.class_weight.clone(),
        );
        registry.register(
            "class_cpu_throttled_seconds",
            "Time a class parent was throttled by its own CPU quota (cpu.stat throttled_usec / throttled_time), by class",
            self.class_throttled.clone(),
        );
        registry.register(
            "class_cpu_seconds",
            "CPU time the servers of a class used (the class parent's cpuacct.usage / cpu.stat usage_usec), by class",
            self.class_cpu.clone(),
        );
        registry.register(
            "class_stall_seconds",
            "Stall of a class's tasks so far (cgroup v2: the class parent's PSI some total; v1 CPU: its threads' run-queue wait), by class and resource, where the kernel tells",
            self.class_stall.clone(),
        );
    }

    /// Sets the gauges: the servers' from `limits` (each running server's), the classes' from
    /// what the kernel said of them (`Supervisor::class_stats`).
    pub fn refresh(
        &self,
        classes: Vec<(CgroupClass, ClassStats)>,
        limits: &[(String, CgroupLimits)],
    ) {
        self.server_quota_cores.clear();
        for (server, l) in limits {
            self.server_quota_cores
                .get_or_create(&ServerLabel {
                    server: server.clone(),
                })
                .set(quota_cores(l));
        }
        self.class_quota_cores.clear();
        self.class_weight.clear();
        self.class_throttled.clear();
        self.class_cpu.clear();
        self.class_stall.clear();
        for (class, s) in classes {
            let label = class_label(class);
            self.class_quota_cores
                .get_or_create(&label)
                .set(quota_cores(&s.limits));
            self.class_weight
                .get_or_create(&label)
                .set(weight_value(s.limits.cpu_weight));
            self.class_throttled
                .get_or_create(&label)
                .set(s.usage.cpu_throttled_usec as f64 / 1e6);
            self.class_cpu
                .get_or_create(&label)
                .set(s.usage.cpu_usage_usec as f64 / 1e6);
            for (r, us) in s.stall_usec {
                self.class_stall
                    .get_or_create(&ClassResourceLabel {
                        class: label.class.clone(),
                        resource: r.as_str().into(),
                    })
                    .set(us as f64 / 1e6);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroups::{CgroupManager, CpuPolicy, FsCgroups, limits_for};
    use backfill_shared::{PerfFactor, Resources, ServerClass, ServerId};
    use std::fs;
    use std::path::Path;

    const HOST: CpuPolicy = CpuPolicy {
        mhz_per_core: 2000,
        period_us: 100_000,
        normal_quota: true,
    };

    fn limits(class: ServerClass, cpu_mhz: u64) -> CgroupLimits {
        let r = Resources {
            cpu_mhz,
            vcpus: 4,
            mem_bytes: 256 << 20,
        };
        limits_for(&r, PerfFactor::FULL, class, &HOST)
    }

    fn render(m: &KernelMetrics) -> String {
        let mut registry = Registry::with_prefix("backfill_agent");
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    /// Two servers, one per class, on a tree: what the metrics say of them and their classes.
    fn scrape(cg: &FsCgroups, write: impl Fn(&Path)) -> String {
        let (normal, spot) = (ServerId::from_u128(1), ServerId::from_u128(2));
        let (ln, ls) = (
            limits(ServerClass::Normal, 3000),
            limits(ServerClass::Spot, 500),
        );
        cg.create(&normal, &ln).unwrap();
        cg.create(&spot, &ls).unwrap();
        write(&fs::canonicalize(cg.parent_dirs()[0].parent().unwrap()).unwrap());
        let classes = CgroupClass::ALL
            .into_iter()
            .filter_map(|c| Some((c, cg.class_stats(c).unwrap()?)))
            .collect();
        let m = KernelMetrics::default();
        m.refresh(classes, &[(normal.to_string(), ln), (spot.to_string(), ls)]);
        render(&m)
    }

    #[test]
    fn v1_classes_and_servers_on_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        for (name, files) in [
            (
                "cpu",
                &[
                    ("cpu.cfs_quota_us", "-1\n"),
                    ("cpu.cfs_period_us", "100000\n"),
                    ("cpu.shares", "1024\n"),
                ][..],
            ),
            ("cpuacct", &[("cpuacct.usage", "0\n")][..]),
            (
                "memory",
                &[
                    ("memory.limit_in_bytes", "9223372036854771712\n"),
                    ("memory.usage_in_bytes", "0\n"),
                ][..],
            ),
        ] {
            let d = t.path().join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("cgroup.procs"), "1\n").unwrap();
            for (f, c) in files {
                fs::write(d.join(f), c).unwrap();
            }
        }
        let cg = FsCgroups::v1_at(t.path(), "agent").unwrap();
        let text = scrape(&cg, |_| {
            let idle = t.path().join("cpu/agent/idle");
            fs::write(
                idle.join("cpu.stat"),
                "nr_periods 10\nnr_throttled 2\nthrottled_time 1500000000\n",
            )
            .unwrap();
            fs::write(
                t.path().join("cpuacct/agent/idle/cpuacct.usage"),
                "2500000000\n",
            )
            .unwrap();
            fs::write(
                t.path().join("cpu/agent/normal/cpu.cfs_quota_us"),
                "50000\n",
            )
            .unwrap();
        });
        has(
            &text,
            "backfill_agent_cpu_quota_cores{server=\"00000000-0000-0000-0000-000000000001\"} 1.5",
        );
        has(
            &text,
            "backfill_agent_cpu_quota_cores{server=\"00000000-0000-0000-0000-000000000002\"} 0.25",
        );
        has(
            &text,
            "backfill_agent_class_cpu_quota_cores{class=\"idle\"} -1.0",
        );
        has(
            &text,
            "backfill_agent_class_cpu_quota_cores{class=\"normal\"} 0.5",
        );
        // normal/: its one server's shares (150 x 1024 / 100 = 1536), read back as weight 150.
        has(
            &text,
            "backfill_agent_class_cpu_weight{class=\"normal\"} 150",
        );
        has(&text, "backfill_agent_class_cpu_weight{class=\"idle\"} 0");
        has(
            &text,
            "backfill_agent_class_cpu_throttled_seconds{class=\"idle\"} 1.5",
        );
        has(
            &text,
            "backfill_agent_class_cpu_seconds{class=\"idle\"} 2.5",
        );
        // A simulated v1 tree has no schedstats to read: no stall series.
        assert!(
            !text.contains("backfill_agent_class_stall_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn v2_classes_and_servers_on_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "\n").unwrap();
        fs::write(t.path().join("cgroup.procs"), "1\n").unwrap();
        let cg = FsCgroups::v2_at(t.path(), "agent").unwrap();
        let text = scrape(&cg, |_| {
            let idle = t.path().join("agent/idle");
            fs::write(
                idle.join("cpu.stat"),
                "usage_usec 4000000\nuser_usec 0\nsystem_usec 0\nthrottled_usec 250000\n",
            )
            .unwrap();
            fs::write(idle.join("cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=3000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n").unwrap();
            let normal = t.path().join("agent/normal");
            fs::write(normal.join("memory.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        });
        has(
            &text,
            "backfill_agent_class_cpu_weight{class=\"normal\"} 150",
        );
        has(&text, "backfill_agent_class_cpu_weight{class=\"idle\"} 0");
        has(
            &text,
            "backfill_agent_class_cpu_quota_cores{class=\"normal\"} -1.0",
        );
        has(
            &text,
            "backfill_agent_class_cpu_throttled_seconds{class=\"idle\"} 0.25",
        );
        has(
            &text,
            "backfill_agent_class_cpu_seconds{class=\"idle\"} 4.0",
        );
        has(
            &text,
            "backfill_agent_class_stall_seconds{class=\"idle\",resource=\"cpu\"} 3.0",
        );
        has(
            &text,
            "backfill_agent_class_stall_seconds{class=\"normal\",resource=\"memory\"} 0.5",
        );
    }
}
