//! Building and running the coordinator: load the store, bind both listeners, serve until
//! shutdown. Binding is separate from running so callers (dev mode, tests) learn the addresses.

use crate::api;
use crate::cmd::config::CoordinatorConfig;
use crate::link;
use crate::state::coordinator::Coordinator;
use crate::store::{Store, StoreError};
use crate::tls_accept::Acceptors;
use backfill_shared::tls::{self, TlsError};
use backfill_shared::{Clock, SystemClock};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::cmd::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Bound {
    pub api_addr: SocketAddr,
    pub link_addr: SocketAddr,
    /// The metrics listener (`admin_addr` in the configuration and the log).
    pub metrics_addr: SocketAddr,
    /// The management listener (optional client certificates, token authentication).
    pub management_addr: Option<SocketAddr>,
    pub coordinator: Arc<Coordinator>,
    pub(crate) management: Option<(TcpListener, Acceptors)>,
    pub(crate) api: TcpListener,
    pub(crate) link: TcpListener,
    pub(crate) metrics_listener: TcpListener,
    pub(crate) acceptor: Acceptors,
    pub(crate) tls_files: backfill_shared::tls::TlsFiles,
    pub(crate) drain: std::time::Duration,
    pub(crate) link_timing: link::LinkConfig,
    pub(crate) http: crate::cmd::config::HttpSettings,
    /// The configuration, for coordinators on PostgreSQL that rebuild their model (`ha`).
    pub(crate) cfg: CoordinatorConfig,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

impl Bound {
    pub async fn new(cfg: &CoordinatorConfig) -> Result<Bound, DaemonError> {
        let acceptor = Acceptors::new(TlsAcceptor::from(tls::server_config(&cfg.tls)?));
        if let crate::store::Database::Sqlite(path) = &cfg.database
            && let Some(dir) = path.parent()
        {
            // The store reports a clearer error than this would if it fails.
            let _ = std::fs::create_dir_all(dir);
        }
        let store = Store::open(&cfg.database, std::time::Duration::from_secs(30)).await?;
        tracing::info!(backend = store.backend(), database = %cfg.database, "store open");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        store.seed_accounts(&[], &cfg.accounts, clock.now()).await?;
        cfg.drivers.warn_if_open();
        let coordinator = Arc::new(build(cfg, store, clock, &cfg.backfill_accounts).await?);
        let api = bind(cfg.api_addr).await?;
        let link = bind(cfg.link_addr).await?;
        let metrics_listener = bind(cfg.metrics_addr).await?;
        let api_addr = local(&api, cfg.api_addr);
        let link_addr = local(&link, cfg.link_addr);
        let _ = coordinator.link_addr.set(client_addr(link_addr));
        let metrics_addr = local(&metrics_listener, cfg.metrics_addr);
        let management = match cfg.operator.management_addr {
            Some(addr) => {
                let config = tls::server_config_optional_client(&cfg.tls)?;
                let l = bind(addr).await?;
                let at = local(&l, addr);
                tracing::info!(management_addr = %at, "management listening (TLS, token or admin certificate)");
                Some((l, Acceptors::new(TlsAcceptor::from(config))))
            }
            None => None,
        };
        let management_addr = management.as_ref().map(|(l, _)| local(l, cfg.api_addr));
        tracing::info!(%api_addr, "API listening (mutual TLS)");
        tracing::info!(%link_addr, "agent link listening (mutual TLS)");
        tracing::info!(admin_addr = %metrics_addr, "admin listening (/metrics, /healthz, /ready)");
        Ok(Bound {
            api_addr,
            link_addr,
            metrics_addr,
            management_addr,
            coordinator,
            management,
            api,
            link,
            metrics_listener,
            acceptor,
            tls_files: cfg.tls.clone(),
            drain: std::time::Duration::from_secs(cfg.drain_timeout_s),
            link_timing: cfg.link,
            http: cfg.http.clone(),
            cfg: cfg.clone(),
        })
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.coordinator.store.shared().is_some() {
            // PostgreSQL: several coordinators may share it; one leads (docs/ha.md).
            return crate::cmd::ha::serve::run(self, shutdown).await;
        }
        // Listeners are bound: tell systemd (Type=notify) we are ready.
        let notifier = backfill_shared::notify::Notifier::from_env();
        notifier.ready(&format!(
            "API on {}, agent link on {}",
            self.api_addr, self.link_addr
        ));
        let router = api::router(self.coordinator.clone());
        let metrics = &self.coordinator.metrics;
        let api = tokio::spawn(api::serve_api(
            self.api,
            self.acceptor.clone(),
            router,
            (shutdown.clone(), self.drain),
            api::Listening::new("api", self.http.api(), metrics),
        ));
        let link = tokio::spawn(link::serve_link(
            self.link,
            self.acceptor.clone(),
            self.coordinator.clone(),
            self.link_timing,
            shutdown.clone(),
        ));
        let metrics_served = tokio::spawn(crate::api::metrics::serve_metrics(
            self.metrics_listener,
            crate::api::metrics::metrics_router(self.coordinator.clone()),
            (shutdown.clone(), self.drain),
            api::Listening::new("admin", self.http.metrics(), metrics),
        ));
        let management = self.management.map(|(listener, acceptor)| {
            let served = tokio::spawn(api::serve_management(
                listener,
                acceptor.clone(),
                api::management_router(self.coordinator.clone()),
                (shutdown.clone(), self.drain),
                api::Listening::new("management", self.http.management(), metrics),
            ));
            (served, acceptor)
        });
        let optional = management.as_ref().map(|(_, a)| a.clone());
        let reloader = tokio::spawn(reload_on_sighup(
            self.acceptor.clone(),
            optional,
            self.tls_files.clone(),
            shutdown.clone(),
        ));
        let deliveries = tokio::spawn(crate::ops::webhooks::delivery::run(
            self.coordinator.clone(),
            shutdown.clone(),
        ));
        let ticker = tokio::spawn(tick(
            self.coordinator.clone(),
            notifier.clone(),
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        notifier.stopping();
        let _ = ticker.await;
        let _ = deliveries.await;
        let _ = reloader.await;
        let _ = metrics_served.await;
        let _ = api.await;
        if let Some((served, _)) = management {
            let _ = served.await;
        }
        let _ = link.await;
        self.coordinator.store.close().await;
        tracing::info!("coordinator stopped");
    }
}

/// The coordinator `cfg` describes, its model loaded from `store` (`seed`: the accounts to
/// create with the backfill permission if missing).
pub(crate) async fn build(
    cfg: &CoordinatorConfig,
    store: Store,
    clock: Arc<dyn Clock>,
    seed: &[String],
) -> Result<Coordinator, DaemonError> {
    let billing = cfg.billing()?;
    let here = std::path::Path::new("coordinator config");
    let flavors = cfg.flavors(here)?;
    let pools = cfg.pools(here, &flavors)?;
    Ok(Coordinator::load(
        store,
        clock,
        seed,
        crate::state::settings::SchedulerSettings::new(cfg.scheduler, cfg.classes),
    )
    .await?
    .with_billing(billing)
    .with_flavors(flavors)
    .with_operator(pools, cfg.operator.clone())
    .await?
    .with_driver_access(cfg.drivers.clone())
    .with_drives(cfg.drives.clone())
    .with_config_view(cfg.redacted())
    .with_webhooks(cfg.webhooks.clone()))
}

/// The scheduler's clock: due terminations, queued servers, growing back, once a second. It is
/// the main loop: the systemd watchdog is fed from here, so a stuck loop gets restarted.
pub(crate) async fn tick(
    coordinator: Arc<Coordinator>,
    notifier: backfill_shared::notify::Notifier,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = coordinator.clock.now();
        if let Err(e) = coordinator.tick(now).await {
            tracing::error!(error = %e, "scheduler tick failed; retrying next second");
        }
        notifier.watchdog();
    }
}

/// SIGHUP re-reads the CA, certificate and key: connections accepted afterwards use them, so a
/// rotation needs no restart. A broken set is refused and the old one kept.
pub(crate) async fn reload_on_sighup(
    acceptors: Acceptors,
    management: Option<Acceptors>,
    files: backfill_shared::tls::TlsFiles,
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
        let optional = match &management {
            Some(_) => tls::server_config_optional_client(&files).map(Some),
            None => Ok(None),
        };
        match tls::server_config(&files).and_then(|c| Ok((c, optional?))) {
            Ok((cfg, optional)) => {
                acceptors.replace(TlsAcceptor::from(cfg));
                if let (Some(a), Some(c)) = (&management, optional) {
                    a.replace(TlsAcceptor::from(c));
                }
                tracing::info!(cert = %files.cert.display(), "certificates reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload failed; keeping the certificates in use");
            }
        }
    }
}

/// Where a client should connect for a listener bound to `addr`.
pub fn client_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}
