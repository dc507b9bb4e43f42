//! The lease loop: every tick (a sixth of the lease) a follower tries to take the lease and a
//! leader renews it, on a database session of its own. The result goes out on a watch channel
//! that the daemon (`super::serve`) follows.
//!
//! A leader steps down when the lease is taken from it (renewal finds another epoch) or when it
//! cannot renew before its own deadline, counted on this machine's monotonic clock from the
//! start of its last successful renewal and a tick short of the lease, so it gives up before
//! the database would let another coordinator in.

use super::Role;
use crate::store::PgStore;
use crate::store::leader::{Claim, LeaseSession};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The tick for a lease: a sixth of it, at least 100 ms.
pub fn tick(lease: Duration) -> Duration {
    (lease / 6).max(Duration::from_millis(100))
}

/// Runs until `shutdown`; a leader lets go of the lease on the way out, so another takes it at
/// once.
pub async fn run(
    store: PgStore,
    claim: Claim,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
) {
    let tick = tick(claim.lease);
    let mut session: Option<LeaseSession> = None;
    // While leading: the epoch and the local deadline.
    let mut leading: Option<(i64, Instant)> = None;
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        let started = Instant::now();
        if let Some((epoch, deadline)) = leading
            && started >= deadline
        {
            step_down(
                &role,
                epoch,
                "the lease could not be renewed in time (database unreachable or too slow)",
            );
            leading = None;
            session = None;
        }
        let s = match session.as_mut() {
            Some(s) => s,
            None => match within(tick * 2, store.lease_session()).await {
                Ok(s) => session.insert(s),
                Err(e) => {
                    tracing::warn!(error = %e, "lease: cannot reach the database; retrying");
                    continue;
                }
            },
        };
        let step = match leading {
            Some((epoch, _)) => renew(s, epoch, &claim, tick).await,
            None => take(s, &claim, tick).await,
        };
        match step {
            Err(e) => {
                tracing::warn!(error = %e, "lease: database call failed; reconnecting");
                session = None;
            }
            Ok(Step::Renewed(epoch)) => leading = Some((epoch, started + claim.lease - tick)),
            Ok(Step::Lost(epoch)) => {
                step_down(&role, epoch, "another coordinator took the lease");
                leading = None;
            }
            Ok(Step::Took(epoch)) => {
                tracing::info!(epoch, name = %claim.holder, "leading: took the lease");
                leading = Some((epoch, started + claim.lease - tick));
                role.send_replace(Role::Leader { epoch });
            }
            Ok(Step::Follows(row)) => {
                let leader =
                    (!row.holder.is_empty() && row.deadline_ms >= row.now_ms).then_some(row);
                role.send_if_modified(|r| match r {
                    Role::Follower { leader: old, .. } => {
                        let changed = old.as_ref().map(|o| (o.epoch, &o.holder))
                            != leader.as_ref().map(|l| (l.epoch, &l.holder));
                        *old = leader;
                        changed
                    }
                    Role::Leader { .. } => false,
                });
            }
        }
    }
    if let (Some((epoch, _)), Some(mut s)) = (leading, session) {
        role.send_replace(Role::Follower {
            leader: None,
            stepped_down: Some("shutting down".into()),
        });
        match within(tick * 2, s.release(epoch)).await {
            Ok(()) => tracing::info!(epoch, "lease released"),
            Err(e) => tracing::warn!(error = %e, "lease: could not release; it expires instead"),
        }
        s.close().await;
    }
}

enum Step {
    Took(i64),
    Renewed(i64),
    Lost(i64),
    Follows(crate::store::leader::LeaderRow),
}

async fn take(s: &mut LeaseSession, claim: &Claim, tick: Duration) -> Result<Step, LeaseError> {
    within(tick * 2, s.heartbeat(claim)).await?;
    if let Some(epoch) = within(tick * 2, s.try_take(claim)).await? {
        return Ok(Step::Took(epoch));
    }
    Ok(Step::Follows(within(tick * 2, s.leader()).await?))
}

async fn renew(
    s: &mut LeaseSession,
    epoch: i64,
    claim: &Claim,
    tick: Duration,
) -> Result<Step, LeaseError> {
    within(tick * 2, s.heartbeat(claim)).await?;
    Ok(if within(tick * 2, s.renew(epoch, claim)).await? {
        Step::Renewed(epoch)
    } else {
        Step::Lost(epoch)
    })
}

fn step_down(role: &watch::Sender<Role>, epoch: i64, why: &str) {
    tracing::error!(
        epoch,
        reason = why,
        "stepping down: no longer the leader; scheduling stops and agent links close"
    );
    role.send_replace(Role::Follower {
        leader: None,
        stepped_down: Some(format!("stepped down from epoch {epoch}: {why}")),
    });
}

#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LeaseError::Timeout(limit)),
    }
}
