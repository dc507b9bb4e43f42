//! The coordinator's side of moving a drive (see `moves` for the steps): the operator's request,
//! the relay of each answer to the next order, and what a finished or failed move changes.

use super::{DriveView, mounts, view};
use crate::state::committer::Durable;
use crate::state::coordinator::{Coordinator, OpError};
use crate::state::drive_move::{Move, NotPrepared, Step};
use crate::state::drive_moves::refuse_moving;
use crate::state::model::Model;
use crate::store::DriveStatus;
use backfill_shared::HostId;
use backfill_shared::drive::DriveId;
use backfill_shared::drive_move::{MoveOrder, MoveReport};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;

/// What ending a move leaves for after the model's lock is released: its record's write, and
/// the hosts to hand their drive orders once it is durable.
#[derive(Debug, Default)]
#[must_use]
struct MoveEnded {
    durable: Option<Durable>,
    push: BTreeSet<HostId>,
}

/// How long the target has to say whether it has room, before the request is answered.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

impl Coordinator {
    /// The operator's move of drive `id` to host `to`: checked, then begun; answered once the
    /// target has made room (the copy goes on in the background). Refused while a server that
    /// is not stopped uses the drive, when the target is not a connected VM host or lacks the
    /// space, and when the drive is already moving.
    pub async fn move_drive(&self, id: DriveId, to: &str) -> Result<DriveView, OpError> {
        let host = |message: String| OpError::Invalid {
            field: "host",
            message,
        };
        let to: HostId = to.parse().map_err(|e| host(format!("{e}")))?;
        let prepared = {
            let mut model = self.lock_model().await;
            let d = model
                .drives
                .get(&id)
                .filter(|d| d.status != DriveStatus::Deleting)
                .ok_or(OpError::DriveNotFound(id))?
                .clone();
            refuse_moving(&model, id, "move it again")?;
            if d.status != DriveStatus::Ready {
                return Err(OpError::Conflict(format!(
                    "drive {id} is {}; only a made drive moves",
                    d.status.as_str()
                )));
            }
            if d.host == to {
                return Err(host(format!("drive {id} is already on host {to}")));
            }
            let Some(target) = model.hosts.get(&to) else {
                return Err(host(format!("there is no host {to}")));
            };
            if target.record.inventory.drivers.vm.is_none() {
                return Err(host(format!(
                    "host {to} does not run VMs, so it cannot hold drives"
                )));
            }
            if let Some(s) = self.running_user(&model, id) {
                return Err(OpError::DriveInUse(format!(
                    "drive {id} is mounted on server {s}, which is not stopped; stop it to move the drive"
                )));
            }
            for h in [&d.host, &to] {
                if !model.moves.links.contains_key(h) {
                    return Err(OpError::NeverFits(format!(
                        "host {h} is not connected; a drive moves between connected hosts"
                    )));
                }
            }
            let (m, rx, (first_host, first)) = Move::start(id, d.host.clone(), to.clone(), d.size);
            model.moves.moving.insert(id, m);
            if !model.moves.send(&first_host, first) {
                model.moves.moving.remove(&id);
                return Err(OpError::NeverFits(format!(
                    "host {first_host} is not connected"
                )));
            }
            tracing::info!(drive = %id, from = %d.host, to = %to, "drive move begun");
            rx
        };
        let refused = match tokio::time::timeout(PREPARE_TIMEOUT, prepared).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(NotPrepared::Refused(why)))) => Some(host(why)),
            Ok(Ok(Err(NotPrepared::Ended(why)))) => Some(OpError::NeverFits(format!(
                "the move of drive {id} ended before host {to} made room: {why}"
            ))),
            Ok(Err(_)) => Some(OpError::NeverFits(format!(
                "the move of drive {id} ended before host {to} made room"
            ))),
            Err(_) => {
                let why = format!("host {to} did not answer within {PREPARE_TIMEOUT:?}");
                let mut model = self.lock_model().await;
                let ended = self.end_move(&mut model, id, Err(why.clone())).await?;
                drop(model);
                self.finish_move(ended).await?;
                Some(OpError::NeverFits(why))
            }
        };
        if let Some(e) = refused {
            return Err(e);
        }
        let model = self.lock_model().await;
        let d = model.drives.get(&id).ok_or(OpError::DriveNotFound(id))?;
        Ok(view(&model, d, &mounts(&model)))
    }

    /// A fresh channel of move orders for `host`'s session `conn`.
    pub(crate) async fn move_channel(
        &self,
        host: &HostId,
        conn: u64,
    ) -> mpsc::UnboundedReceiver<MoveOrder> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut model = self.lock_model().await;
        let replaced = model.moves.links.insert(host.clone(), (conn, tx)).is_some();
        if replaced {
            // A new session of the host: the old one's steps in flight are lost with it.
            self.fail_moves_through(&mut model, host, "reconnected")
                .await;
        }
        rx
    }

    /// Fails every move through `host`, whose link was `what` (lost, reconnected).
    async fn fail_moves_through(&self, model: &mut Model, host: &HostId, what: &str) {
        let hit: Vec<DriveId> = model
            .moves
            .moving
            .values()
            .filter(|m| m.involves(host))
            .map(|m| m.drive)
            .collect();
        for id in hit {
            let why = format!("host {host}'s link was {what}");
            // Nobody waits for this record: a failed write reloads the model.
            match self.end_move(model, id, Err(why)).await {
                Ok(ended) => {
                    if let Some(d) = ended.durable {
                        d.detach();
                    }
                }
                Err(e) => {
                    tracing::warn!(drive = %id, error = %e, "cannot record a failed drive move")
                }
            }
        }
    }

    /// Session `conn` of `host` is gone: so are the moves that go through it.
    pub(crate) async fn move_channel_gone(&self, host: &HostId, conn: u64) {
        let mut model = self.lock_model().await;
        if model.moves.links.get(host).is_some_and(|(c, _)| *c == conn) {
            model.moves.links.remove(host);
        } else {
            return;
        }
        self.fail_moves_through(&mut model, host, "lost").await;
    }

    /// `host` answered a step of a move: the next step, or the end.
    pub(crate) async fn apply_move_report(
        &self,
        host: &HostId,
        r: MoveReport,
    ) -> Result<(), OpError> {
        let id = r.drive();
        let mut model = self.lock_model().await;
        let Some(m) = model.moves.moving.get_mut(&id) else {
            tracing::debug!(drive = %id, host = %host, "an answer for no move; ignored");
            return Ok(());
        };
        let outcome = match m.on_report(host, r) {
            Step::Send(orders) => {
                let unsent = orders
                    .into_iter()
                    .find_map(|(h, order)| (!model.moves.send(&h, order)).then_some(h));
                match unsent {
                    Some(h) => Err(format!("host {h} is not connected")),
                    None => return Ok(()),
                }
            }
            Step::Done => Ok(()),
            Step::Failed(why) => Err(why),
        };
        let ended = self.end_move(&mut model, id, outcome).await?;
        drop(model);
        self.finish_move(ended).await
    }

    /// What [`Coordinator::end_move`] left for after the model's lock: wait until its record
    /// is durable, then hand the hosts their drive orders (the source deletes its copy only
    /// once the store names the target).
    async fn finish_move(&self, ended: MoveEnded) -> Result<(), OpError> {
        if let Some(d) = ended.durable {
            d.wait().await?;
        }
        self.push_drive_orders(&ended.push).await;
        Ok(())
    }

    /// Ends the move of `id`: done, the drive's record names the target (stored first) and the
    /// source deletes its file; failed, the drive stays on its source and its `error` says why
    /// (a target that refused at the start is only the request's answer).
    /// The record is queued, not waited for: see [`MoveEnded`].
    async fn end_move(
        &self,
        model: &mut Model,
        id: DriveId,
        outcome: Result<(), String>,
    ) -> Result<MoveEnded, OpError> {
        let mut ended = MoveEnded::default();
        let Some(mut m) = model.moves.moving.remove(&id) else {
            return Ok(ended);
        };
        let was_preparing = m.phase == crate::state::drive_move::Phase::Preparing;
        for (h, order) in m.aborts() {
            model.moves.send(&h, order);
        }
        let Some(mut d) = model.drives.get(&id).cloned() else {
            return Ok(ended);
        };
        match outcome {
            Ok(()) => {
                d.host = m.to.clone();
                d.error = None;
                model.drives.insert(id, d.clone());
                ended.durable = Some(self.commit_drive(model, d).await?);
                model
                    .moves
                    .moved_away
                    .entry(m.from.clone())
                    .or_default()
                    .insert(id);
                if let Some(s) = model.moves.moved_away.get_mut(&m.to) {
                    s.remove(&id);
                }
                ended.push = BTreeSet::from([m.from.clone(), m.to.clone()]);
                tracing::info!(drive = %id, from = %m.from, to = %m.to, "drive moved");
            }
            Err(why) => {
                m.fail(&why);
                tracing::warn!(drive = %id, from = %m.from, to = %m.to, reason = %why, "drive move failed");
                if !was_preparing {
                    d.error = Some(format!("the move to host {} failed: {why}", m.to));
                    model.drives.insert(id, d.clone());
                    ended.durable = Some(self.commit_drive(model, d).await?);
                }
            }
        }
        Ok(ended)
    }

    /// Queues a drive's record (the model has it already).
    async fn commit_drive(
        &self,
        model: &mut Model,
        d: crate::store::DriveRecord,
    ) -> Result<Durable, OpError> {
        let batch = crate::store::WriteBatch {
            drives: vec![d],
            ..Default::default()
        };
        Ok(self.commit_batch(model, batch, &[]).await?)
    }

    /// `host` reported the drives it holds: those moved away and gone need no more deleting.
    pub(crate) fn forget_moved_away(model: &mut Model, host: &HostId, held: &BTreeSet<DriveId>) {
        if let Some(s) = model.moves.moved_away.get_mut(host) {
            s.retain(|id| held.contains(id));
            if s.is_empty() {
                model.moves.moved_away.remove(host);
            }
        }
    }
}
