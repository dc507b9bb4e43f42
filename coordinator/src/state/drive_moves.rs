//! The drive moves under way (the model's `moves`; see `drive_move` for one move's steps),
//! the links they go over, and the refusal to change a drive while it moves. The operations
//! are in `ops::drives::moving`.

use crate::state::coordinator::OpError;
use crate::state::drive_move::Move;
use crate::state::model::Model;
use crate::store::DriveRecord;
use backfill_shared::HostId;
use backfill_shared::drive::DriveId;
use backfill_shared::drive_move::MoveOrder;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::mpsc;

/// The moves under way, the links they go over, and drives whose old host still has a file.
#[derive(Debug, Default)]
pub struct Moves {
    pub(crate) moving: BTreeMap<DriveId, Move>,
    /// Each connected agent's move channel (by its session's `conn`).
    pub(crate) links: BTreeMap<HostId, (u64, mpsc::UnboundedSender<MoveOrder>)>,
    /// Drives moved away from a host whose file there is not gone yet: that host deletes them.
    pub(crate) moved_away: BTreeMap<HostId, BTreeSet<DriveId>>,
}

impl Moves {
    /// The move of drive `id`, if one is under way.
    pub fn get(&self, id: &DriveId) -> Option<&Move> {
        self.moving.get(id)
    }

    /// Drives `host` should delete because they moved away (and are not back).
    pub fn moved_away_from<'a>(
        &'a self,
        host: &'a HostId,
        drives: &'a BTreeMap<DriveId, DriveRecord>,
    ) -> impl Iterator<Item = DriveId> + 'a {
        self.moved_away
            .get(host)
            .into_iter()
            .flatten()
            .filter(move |id| drives.get(id).is_none_or(|d| d.host != *host))
            .copied()
    }

    /// Sends `order` to `host`; false when its agent is not connected.
    pub(crate) fn send(&self, host: &HostId, order: MoveOrder) -> bool {
        self.links
            .get(host)
            .is_some_and(|(_, tx)| tx.send(order).is_ok())
    }
}

/// The refusal for changing a drive that is moving.
pub(crate) fn refuse_moving(model: &Model, id: DriveId, what: &str) -> Result<(), OpError> {
    match model.moves.get(&id) {
        Some(m) => Err(OpError::Conflict(format!(
            "drive {id} is moving from host {} to host {}; {what} when the move is done",
            m.from, m.to
        ))),
        None => Ok(()),
    }
}
