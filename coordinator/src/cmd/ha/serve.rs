//! The coordinator daemon on PostgreSQL: listeners bound once, roles that change under them.
//!
//! A term begins when the lease loop reports `Leader { epoch }`: the store stamps writes with
//! the epoch, the model is loaded afresh from the store (servers, queue, due terminations,
//! auto mode, the webhook outbox: all of it is in the store), and the scheduler's tick, webhook
//! delivery and agent sessions run under the term's token. Agents that reconnect get their
//! desired state pushed as they register, as after a restart. A term ends when the role turns
//! `Follower`: the token is cancelled (tick, deliveries and agent links stop), the store's
//! epoch is cleared, and the model is dropped. Meanwhile, and between terms, the model is
//! reloaded from the store every `SNAPSHOT_EVERY` for reads.

use super::{HaConfig, Role, front, lease};
use crate::api;
use crate::cmd::daemon::Bound;
use crate::state::coordinator::Coordinator;
use crate::store::leader::Claim;
use crate::store::{PgStore, Store};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backfill_shared::pki::{PeerIdentity, Role as CertRole};
use backfill_shared::{Clock, SystemClock};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a follower reloads its model from the store (reads lag at most about this).
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// One model and the routers over it.
pub struct Views {
    pub coordinator: Arc<Coordinator>,
    pub api: Router,
    pub management: Router,
}

impl Views {
    fn new(coordinator: Arc<Coordinator>) -> Arc<Views> {
        Arc::new(Views {
            api: api::router(coordinator.clone()),
            management: api::management_router(coordinator.clone()),
            coordinator,
        })
    }
}

struct Term {
    epoch: i64,
    views: Arc<Views>,
    token: CancellationToken,
}

/// What the fronts (API, link, metrics) consult on every request.
pub struct Ha {
    pub name: String,
    pub role: watch::Receiver<Role>,
    pub forward: reqwest::Client,
    term: RwLock<Option<Term>>,
    snapshot: RwLock<Option<(Arc<Views>, Instant)>>,
    takeovers: AtomicU64,
    store: PgStore,
    /// Shared by every model this coordinator builds, and by its listeners.
    metrics: Arc<crate::telemetry::Metrics>,
}

impl Ha {
    /// The leader's model while this coordinator leads.
    pub fn leading(&self) -> Option<Arc<Views>> {
        self.leading_term().map(|(v, _)| v)
    }

    pub fn leading_term(&self) -> Option<(Arc<Views>, CancellationToken)> {
        let t = self
            .term
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.as_ref().map(|t| (t.views.clone(), t.token.clone()))
    }

    fn epoch(&self) -> Option<i64> {
        let t = self
            .term
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.as_ref().map(|t| t.epoch)
    }

    /// The follower's model and its age.
    pub fn snapshot(&self) -> Option<(Arc<Views>, Duration)> {
        let s = self
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.as_ref().map(|(v, at)| (v.clone(), at.elapsed()))
    }

    fn set_snapshot(&self, views: Arc<Views>, at: Instant) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((views, at));
    }

    fn begin(&self, epoch: i64, views: Arc<Views>, token: CancellationToken) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
        *self
            .term
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Term {
            epoch,
            views,
            token,
        });
    }

    /// Ends the term if there is one (true then).
    fn end(&self) -> bool {
        self.store.set_epoch(0);
        let old = self
            .term
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match old {
            Some(t) => {
                t.token.cancel();
                true
            }
            None => false,
        }
    }
}

/// What this coordinator claims the lease with.
fn claim(cfg: &HaConfig, api: SocketAddr, link: SocketAddr) -> Claim {
    let (api, link) = (
        crate::cmd::daemon::client_addr(api),
        crate::cmd::daemon::client_addr(link),
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "coordinator".into());
    Claim {
        holder: cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}:{}", api.port())),
        api_url: cfg
            .advertise_api
            .clone()
            .unwrap_or_else(|| format!("https://{api}")),
        link_addr: cfg.advertise_link.unwrap_or(link).to_string(),
        lease: cfg.lease(),
    }
}

pub async fn run(b: Bound, shutdown: CancellationToken) {
    let Some(pg) = b.coordinator.store.shared().cloned() else {
        return;
    };
    let store = b.coordinator.store.clone();
    let notifier = backfill_shared::notify::Notifier::from_env();
    let claim = claim(&b.cfg.ha, b.api_addr, b.link_addr);
    let forward = match backfill_shared::tls::client_config(&b.tls_files) {
        Ok(tls) => reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build(),
        Err(e) => {
            tracing::error!(error = %e, "cannot load this coordinator's certificate for forwarding");
            return;
        }
    };
    let Ok(forward) = forward else {
        tracing::error!("cannot build the forwarding client");
        return;
    };
    let (role_tx, role_rx) = watch::channel(Role::Follower {
        leader: None,
        stepped_down: None,
    });
    let ha = Arc::new(Ha {
        name: claim.holder.clone(),
        role: role_rx.clone(),
        forward,
        term: RwLock::new(None),
        snapshot: RwLock::new(None),
        takeovers: AtomicU64::new(0),
        store: pg.clone(),
        metrics: b.coordinator.metrics.clone(),
    });
    ha.set_snapshot(Views::new(b.coordinator.clone()), Instant::now());
    notifier.ready(&format!(
        "API on {}, agent link on {} (one of several coordinators)",
        b.api_addr, b.link_addr
    ));
    tracing::info!(name = %claim.holder, api_url = %claim.api_url, link = %claim.link_addr, lease = ?claim.lease, "several coordinators: following until this one takes the lease");
    let metrics = b.coordinator.metrics.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(lease::run(pg, claim, role_tx, shutdown.clone()));
    tasks.spawn(api::serve::serve_api_among_coordinators(
        b.api,
        b.acceptor.clone(),
        front::api_router(ha.clone()),
        (shutdown.clone(), b.drain),
        api::Listening::new("api", b.http.api(), &metrics),
    ));
    let management_acceptor = b.management.as_ref().map(|(_, a)| a.clone());
    if let Some((listener, acceptor)) = b.management {
        tasks.spawn(api::serve_management(
            listener,
            acceptor,
            front::management_router(ha.clone()),
            (shutdown.clone(), b.drain),
            api::Listening::new("management", b.http.management(), &metrics),
        ));
    }
    tasks.spawn(crate::api::metrics::serve_metrics(
        b.metrics_listener,
        metrics_router(ha.clone()),
        (shutdown.clone(), b.drain),
        api::Listening::new("admin", b.http.metrics(), &metrics),
    ));
    tasks.spawn(super::link::serve(
        b.link,
        b.acceptor.clone(),
        ha.clone(),
        b.link_timing,
        shutdown.clone(),
    ));
    tasks.spawn(crate::cmd::daemon::reload_on_sighup(
        b.acceptor.clone(),
        management_acceptor,
        b.tls_files.clone(),
        shutdown.clone(),
    ));
    let cfg = Arc::new(b.cfg);
    tasks.spawn(snapshots(
        ha.clone(),
        cfg.clone(),
        store.clone(),
        notifier.clone(),
        shutdown.clone(),
    ));
    terms(&ha, &cfg, &store, b.link_addr, &notifier, &shutdown).await;
    notifier.stopping();
    ha.end();
    while tasks.join_next().await.is_some() {}
    store.close().await;
    tracing::info!("coordinator stopped");
}

/// Follows the role: begins a term on `Leader`, ends it on `Follower`.
async fn terms(
    ha: &Arc<Ha>,
    cfg: &crate::cmd::config::CoordinatorConfig,
    store: &Store,
    link_addr: SocketAddr,
    notifier: &backfill_shared::notify::Notifier,
    shutdown: &CancellationToken,
) {
    let mut role = ha.role.clone();
    loop {
        let now = role.borrow_and_update().clone();
        match now {
            Role::Leader { epoch } if ha.epoch() != Some(epoch) => {
                ha.end();
                if let Some(pg) = store.shared() {
                    pg.set_epoch(epoch);
                }
                let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                let started = Instant::now();
                match crate::cmd::daemon::build(cfg, store.clone(), clock, &cfg.backfill_accounts)
                    .await
                {
                    Ok(mut c) => {
                        // One set of metrics across terms: counters keep counting.
                        c.metrics = ha.metrics.clone();
                        let c = Arc::new(c);
                        let _ = c.link_addr.set(crate::cmd::daemon::client_addr(link_addr));
                        let token = shutdown.child_token();
                        ha.begin(epoch, Views::new(c.clone()), token.clone());
                        tokio::spawn(crate::cmd::daemon::tick(
                            c.clone(),
                            notifier.clone(),
                            token.clone(),
                        ));
                        tokio::spawn(crate::ops::webhooks::delivery::run(c, token));
                        tracing::info!(epoch, loaded_in = ?started.elapsed(), "leader: model loaded from the store; scheduling, delivering webhooks, taking agents");
                    }
                    Err(e) => {
                        tracing::error!(epoch, error = %e, "leader: cannot load the model; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            Role::Leader { .. } => {}
            Role::Follower { stepped_down, .. } => {
                if ha.end() {
                    tracing::warn!(
                        reason = stepped_down.as_deref().unwrap_or("unknown"),
                        "follower now: scheduling stopped, agent links closed"
                    );
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = role.changed() => if changed.is_err() { return },
        }
    }
}

/// Reloads the model for reads while not leading; feeds the systemd watchdog either way.
async fn snapshots(
    ha: Arc<Ha>,
    cfg: Arc<crate::cmd::config::CoordinatorConfig>,
    store: Store,
    notifier: backfill_shared::notify::Notifier,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SNAPSHOT_EVERY) => {}
        }
        notifier.watchdog();
        if ha.leading().is_some() {
            continue;
        }
        let at = Instant::now();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        match crate::cmd::daemon::build(&cfg, store.clone(), clock, &[]).await {
            Ok(mut c) => {
                c.metrics = ha.metrics.clone();
                ha.set_snapshot(Views::new(Arc::new(c)), at);
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "follower: cannot reload the model; reads serve the last one");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// `/ready`, `/metrics` and `/healthz` for a coordinator among several.
fn metrics_router(ha: Arc<Ha>) -> Router {
    Router::new()
        .route("/ready", axum::routing::get(ready))
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .with_state(ha)
}

fn describe(ha: &Ha) -> String {
    let role = ha.role.borrow().clone();
    match (role, ha.epoch()) {
        (Role::Leader { epoch }, Some(_)) => format!("leader epoch={epoch} name={}", ha.name),
        (Role::Leader { epoch }, None) => {
            format!("leader epoch={epoch} name={} (loading the model)", ha.name)
        }
        (
            Role::Follower {
                leader,
                stepped_down,
            },
            _,
        ) => {
            let mut s = match leader {
                Some(l) => format!(
                    "follower name={} leader={} epoch={} leader_api={}",
                    ha.name, l.holder, l.epoch, l.api_url
                ),
                None => format!("follower name={} leader=none", ha.name),
            };
            if let Some(why) = stepped_down {
                s.push_str(&format!(" ({why})"));
            }
            s
        }
    }
}

async fn ready(State(ha): State<Arc<Ha>>) -> Response {
    match ha.store.leader().await {
        Ok(_) => (StatusCode::OK, format!("ready: {}\n", describe(&ha))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}\n{}\n", describe(&ha)),
        )
            .into_response(),
    }
}

async fn metrics(State(ha): State<Arc<Ha>>) -> Response {
    let views = ha.leading().or_else(|| ha.snapshot().map(|(v, _)| v));
    let mut text = match views {
        Some(v) => v.coordinator.metrics_text().await,
        None => "# EOF\n".into(),
    };
    let (leader, epoch) = match &*ha.role.borrow() {
        Role::Leader { epoch } => (1, *epoch),
        Role::Follower { leader, .. } => (0, leader.as_ref().map_or(0, |l| l.epoch)),
    };
    let ours = format!(
        "# HELP backfill_ha_leader Whether this coordinator leads (1) or follows (0).\n\
         # TYPE backfill_ha_leader gauge\nbackfill_ha_leader {leader}\n\
         # HELP backfill_ha_epoch The leadership epoch this coordinator knows.\n\
         # TYPE backfill_ha_epoch gauge\nbackfill_ha_epoch {epoch}\n\
         # HELP backfill_ha_terms The terms this coordinator has led since it started.\n\
         # TYPE backfill_ha_terms counter\nbackfill_ha_terms_total {}\n",
        ha.takeovers.load(Ordering::Relaxed)
    );
    match text.rfind("# EOF") {
        Some(i) => text.insert_str(i, &ours),
        None => text.push_str(&ours),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/2.0/coordinators/` (admin certificates): the coordinators seen in the last ten
/// seconds, the leader and this one's view, for `backfillctl status`.
pub async fn coordinators(State(ha): State<Arc<Ha>>, req: axum::extract::Request) -> Response {
    let admin = req
        .extensions()
        .get::<PeerIdentity>()
        .is_some_and(|id| id.role == CertRole::Admin);
    if !admin {
        return api::ApiError::permission("this endpoint is for operators (admin certificates)")
            .into_response();
    }
    let (leader, all) = match (
        ha.store.leader().await,
        ha.store.coordinators(Duration::from_secs(10)).await,
    ) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => {
            return api::ApiError::from(crate::state::coordinator::OpError::Store(e))
                .into_response();
        }
    };
    let live = !leader.holder.is_empty() && leader.deadline_ms >= leader.now_ms;
    axum::Json(backfill_api::status::CoordinatorsStatus {
        this: ha.name.clone(),
        role: describe(&ha),
        leader: live.then(|| backfill_api::status::Leader {
            epoch: leader.epoch,
            holder: leader.holder.clone(),
            api_url: leader.api_url.clone(),
            link_addr: leader.link_addr.clone(),
            deadline_ms: leader.deadline_ms,
            since_ms: leader.since_ms,
            now_ms: leader.now_ms,
        }),
        epoch: leader.epoch,
        coordinators: all
            .into_iter()
            .map(|c| backfill_api::status::CoordinatorView {
                name: c.name,
                api_url: c.api_url,
                link_addr: c.link_addr,
                seen_ms: c.seen_ms,
            })
            .collect(),
    })
    .into_response()
}
