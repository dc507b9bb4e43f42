//! The agent's background watchers: pressure, the normal servers' stall, ended workloads, SIGHUP.

use crate::supervisor::Supervisor;
use backfill_shared::tls;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// PSI triggers on CPU and memory: each event may squeeze backfill at once (in the watcher's
/// thread, not at the next round), and a squeeze is reported to the coordinator at once.
pub(super) fn watch_pressure(
    settings: &crate::pressure::PressureSettings,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Arc<Notify>,
    metrics: &Arc<crate::admin::AgentMetrics>,
) {
    use crate::pressure::{PsiFiles, Resource};
    let psi = PsiFiles::default();
    if !settings.enabled {
        tracing::info!("pressure reaction disabled ([pressure] enabled = false)");
        return;
    }
    poll_stall(settings, supervisor, changed, metrics);
    if !psi.available() {
        tracing::warn!(
            "this kernel reports no pressure (no /proc/pressure): backfill is squeezed only by the coordinator"
        );
        return;
    }
    for r in Resource::ALL {
        let supervisor = supervisor.clone();
        let changed = changed.clone();
        let metrics = metrics.clone();
        let watched = psi.watch(r, &settings.trigger(r), move || {
            let squeezed = match supervisor.lock() {
                Ok(mut s) => s.on_pressure(r),
                Err(_) => return false,
            };
            metrics
                .pressure_events
                .get_or_create(&crate::admin::ResourceLabel::of(r))
                .inc();
            if squeezed {
                metrics
                    .pressure_squeezes
                    .get_or_create(&crate::admin::ResourceLabel::of(r))
                    .inc();
                changed.notify_one();
            }
            true
        });
        match watched {
            Ok(_) => {
                tracing::info!(resource = r.as_str(), trigger = %settings.trigger(r), "watching pressure")
            }
            Err(e) => tracing::warn!(resource = r.as_str(), error = %e, "cannot watch pressure"),
        }
    }
}

/// Every `poll_ms`, the normal servers' own stall (see `supervisor::stall`): backfill is
/// squeezed within a poll of a normal server stalling, privileged or not.
fn poll_stall(
    settings: &crate::pressure::PressureSettings,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Arc<Notify>,
    metrics: &Arc<crate::admin::AgentMetrics>,
) {
    if settings.poll_ms == 0 {
        return;
    }
    let (supervisor, changed, metrics) = (supervisor.clone(), changed.clone(), metrics.clone());
    let (every, policy) = (
        std::time::Duration::from_millis(settings.poll_ms),
        settings.stall_policy(),
    );
    let spawned = crate::pressure::poll_every(every, move |now_ms| {
        let (fired, squeezed) = match supervisor.lock() {
            Ok(mut s) => s.poll_stall(now_ms, policy),
            Err(_) => return false,
        };
        for r in &fired {
            let label = crate::admin::ResourceLabel::of(*r);
            metrics.pressure_events.get_or_create(&label).inc();
            if squeezed {
                metrics.pressure_squeezes.get_or_create(&label).inc();
            }
        }
        if squeezed {
            changed.notify_one();
        }
        true
    });
    match spawned {
        Ok(_) => tracing::info!(
            every_ms = settings.poll_ms,
            stall_ms = settings.server_stall_ms,
            window_ms = settings.server_window_ms,
            "watching the normal servers' own stall"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot poll the normal servers' stall"),
    }
}

/// SIGHUP re-reads the agent's CA, certificate and key; the next connection to the coordinator
/// uses them. A broken set is refused and the old one kept.
pub(super) async fn reload_on_sighup(
    connector: Arc<std::sync::RwLock<tokio_rustls::TlsConnector>>,
    files: tls::TlsFiles,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificate reload needs a restart");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        match tls::client_config(&files) {
            Ok(cfg) => {
                *connector
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    tokio_rustls::TlsConnector::from(cfg);
                tracing::info!(cert = %files.cert.display(), "certificates reloaded; the next connection uses them");
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload failed; keeping the certificates in use");
            }
        }
    }
}

/// Notices ended workloads every second, whether or not the coordinator is reachable. The
/// agent's main loop: the systemd watchdog is fed from here.
pub(super) async fn watch_exits(
    supervisor: Arc<Mutex<Supervisor>>,
    changed: Arc<Notify>,
    notifier: backfill_shared::notify::Notifier,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = supervisor.clone();
        let ended = tokio::task::spawn_blocking(move || {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .poll_exits()
        })
        .await
        .unwrap_or(false);
        if ended {
            changed.notify_one();
        }
        notifier.watchdog();
    }
}
