//! Starting one run of a server: its cgroup, its GPUs, its network, then its driver.

use super::{Entry, Run, Supervisor, gpu_env};
use crate::driver::{Launch, Launched};
use crate::network::GuestNet;
use backfill_shared::protocol::DesiredServer;
use backfill_shared::{DriverKind, NetworkMode, ServerId, Workload};

impl Supervisor {
    pub(super) fn start(&mut self, d: &DesiredServer) {
        let id = d.server;
        let kind = d
            .workload
            .as_ref()
            .map_or(Ok(DriverKind::Exec), Workload::kind)
            .unwrap_or(DriverKind::Exec);
        let failed = |reason: String| Entry {
            resources: d.resources,
            perf_factor: d.perf_factor,
            incarnation: d.incarnation,
            termination: d.termination,
            run: Run::Failed { reason },
            guest: Some(d.guest.clone()),
            network: None,
            acknowledged: false,
            shutdown: d.shutdown,
            driver: kind,
            squeezed: None,
        };
        match self.try_start(d, kind) {
            Ok((launched, network)) => {
                let Launched { process, child } = launched;
                tracing::info!(server = %id, pid = process.pid, driver = %kind, "workload started");
                let run = Run::Running {
                    process,
                    child,
                    started_at: self.clock.now(),
                };
                let entry = Entry {
                    run,
                    network,
                    ..failed(String::new())
                };
                self.entries.insert(id, entry);
                if d.perf_factor.mem < 1.0 {
                    self.resize_guest_memory(&id, kind, &d.resources, d.perf_factor);
                }
                // A workload the state file does not know would be lost to a restarted agent.
                if let Err(e) = self.save() {
                    tracing::error!(server = %id, error = %e, "cannot record the workload; stopping it");
                    self.stop(&id);
                    let entry = Entry {
                        shutdown: None,
                        ..failed(format!("cannot record the workload: {e}"))
                    };
                    self.entries.insert(id, entry);
                }
            }
            Err(reason) => {
                tracing::warn!(server = %id, %reason, "workload did not start");
                self.cleanup(&id);
                self.release_driver(&id, kind);
                self.entries.insert(id, failed(reason));
            }
        }
    }

    fn try_start(
        &self,
        d: &DesiredServer,
        kind: DriverKind,
    ) -> Result<(Launched, Option<GuestNet>), String> {
        let id = d.server;
        let default;
        let workload = match &d.workload {
            Some(w) => {
                // Defence in depth: the coordinator checked it too.
                w.validate().map_err(|e| e.0)?;
                w
            }
            None => {
                default = Workload {
                    command: self.default_command.clone(),
                    ..Workload::default()
                };
                &default
            }
        };
        let driver = self.drivers.get(kind).ok_or_else(|| {
            let have: Vec<String> = self.drivers.kinds().iter().map(|k| k.to_string()).collect();
            format!(
                "this host has no {kind} driver (it has: {})",
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            )
        })?;
        let scan = self.gpu_scan();
        let gpus = super::gpus::resolve(&d.gpus, &scan)?;
        let limits = self.limits(&d.resources, d.perf_factor, Some(&d.guest), kind);
        self.cgroups.create(&id, &limits).map_err(|e| {
            self.cgroup_errors.inc();
            e.to_string()
        })?;
        if !scan.devices.is_empty() {
            self.isolate_gpus(&id, &gpus)?;
        }
        let join = self.cgroups.join_files(&id).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| format!("{}: {e}", self.log_dir.display()))?;
        let env = gpu_env(&workload.env, &gpus.uuids);
        let given: Vec<backfill_shared::GpuDevice> = scan
            .devices
            .iter()
            .filter(|g| gpus.uuids.contains(&g.uuid))
            .cloned()
            .collect();
        let log_file = self.log_dir.join(format!("{id}.log"));
        let network = if workload.network_mode() == NetworkMode::Isolated {
            Some(self.make_network(&id).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let launched = driver.launch(&Launch {
            server: id,
            workload,
            resources: d.resources,
            perf_factor: d.perf_factor,
            class: d.guest.class,
            env: &env,
            gpus: &given,
            join_files: &join,
            cgroup_path: self.cgroups.relative_path(&id),
            log_file: &log_file,
            network: network.as_ref(),
            guest: &d.guest,
            run_as: self.run_as,
        });
        match launched {
            Ok(l) => Ok((l, network)),
            Err(e) => {
                if let Some(n) = &network {
                    self.networks.destroy(n);
                }
                Err(e.to_string())
            }
        }
    }

    /// What this host's drivers can run now (each hello re-reads it: VM images come and go).
    pub fn driver_inventory(&self) -> backfill_shared::Drivers {
        self.drivers.inventory()
    }

    /// Tells the run's driver that the run is over.
    pub(super) fn release_driver(&self, id: &ServerId, kind: DriverKind) {
        if let Some(d) = self.drivers.get(kind) {
            d.release(id);
        }
    }
}
