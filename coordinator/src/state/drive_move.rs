//! Moving a drive to another host (an operator action; docs/drives.md). The coordinator relays
//! the copy over the agent links, one chunk in flight: the target makes room (`Prepare`), the
//! source makes a standalone copy and measures it (`Export`), then chunk by chunk `Read` from
//! the source and `Write` to the target, and the target checks size and SHA-256 (`Finish`).
//! Only then does the drive's record name the target; the source's file is deleted after. Any
//! failure (an agent's error, a link gone) leaves the drive where it was, with the reason in its
//! `error`.
//!
//! A move lives in memory (the model's `moves`): a coordinator that restarts mid-move forgets
//! it, and the drive stays on its source, whole.

use backfill_shared::HostId;
use backfill_shared::drive::DriveId;
use backfill_shared::drive_move::{MOVE_CHUNK_BYTES, MoveOrder, MoveReport};
use tokio::sync::oneshot;

/// Where a move is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The target checks its space.
    Preparing,
    /// The source makes its standalone copy.
    Exporting,
    /// Chunk `offset..` is on its way (read from the source, then written to the target).
    Copying {
        total: u64,
        sha256: String,
        offset: u64,
    },
    /// The target checks the whole and puts it in place.
    Finishing,
}

/// Why a move ended before the target made room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPrepared {
    /// The target refused (no room, the drive already there): the operator's request is wrong.
    Refused(String),
    /// The move ended otherwise (a link lost, no answer).
    Ended(String),
}

/// One drive on its way from `from` to `to`.
#[derive(Debug)]
pub struct Move {
    pub drive: DriveId,
    pub from: HostId,
    pub to: HostId,
    pub phase: Phase,
    /// Told once the target has made room (or could not): the operator's request waits on it.
    pub prepared: Option<oneshot::Sender<Result<(), NotPrepared>>>,
}

/// What to do after an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these orders (nothing, for an answer that was not expected).
    Send(Vec<(HostId, MoveOrder)>),
    /// The copy is whole on the target: point the drive there, delete it on the source.
    Done,
    /// The move failed, for this reason: abort it on both hosts.
    Failed(String),
}

impl Move {
    /// A move of `drive` (of virtual size `size`) and its first order, to the target.
    pub fn start(
        drive: DriveId,
        from: HostId,
        to: HostId,
        size: u64,
    ) -> (
        Move,
        oneshot::Receiver<Result<(), NotPrepared>>,
        (HostId, MoveOrder),
    ) {
        let (tx, rx) = oneshot::channel();
        let first = (to.clone(), MoveOrder::Prepare { drive, size });
        (
            Move {
                drive,
                from,
                to,
                phase: Phase::Preparing,
                prepared: Some(tx),
            },
            rx,
            first,
        )
    }

    /// Whether `host` is the move's source or target.
    pub fn involves(&self, host: &HostId) -> bool {
        self.from == *host || self.to == *host
    }

    /// The orders that clean up after a failed (or finished) move, on both hosts.
    pub fn aborts(&self) -> Vec<(HostId, MoveOrder)> {
        let drive = self.drive;
        vec![
            (self.from.clone(), MoveOrder::Abort { drive }),
            (self.to.clone(), MoveOrder::Abort { drive }),
        ]
    }

    /// Tells the waiting request, if it still waits.
    fn tell(&mut self, r: Result<(), NotPrepared>) {
        if let Some(tx) = self.prepared.take() {
            let _ = tx.send(r);
        }
    }

    /// Ends the move as failed (tells a request that still waits).
    pub fn fail(&mut self, why: &str) {
        self.tell(Err(NotPrepared::Ended(why.to_owned())));
    }

    /// The next step after `host` answered `r`. An answer from the wrong host or for another
    /// phase is ignored (a repeat); an error ends the move.
    pub fn on_report(&mut self, host: &HostId, r: MoveReport) -> Step {
        let drive = self.drive;
        let (from, to) = (self.from.clone(), self.to.clone());
        match (&mut self.phase, r) {
            (Phase::Preparing, MoveReport::Prepared { result, .. }) if *host == to => {
                match result {
                    Ok(()) => {
                        self.tell(Ok(()));
                        self.phase = Phase::Exporting;
                        Step::Send(vec![(from, MoveOrder::Export { drive })])
                    }
                    Err(e) => {
                        let why = format!("host {to} cannot take the drive: {e}");
                        self.tell(Err(NotPrepared::Refused(why.clone())));
                        Step::Failed(why)
                    }
                }
            }
            (Phase::Exporting, MoveReport::Exported { result, .. }) if *host == from => {
                match result {
                    Ok(x) => {
                        self.phase = Phase::Copying {
                            total: x.size,
                            sha256: x.sha256,
                            offset: 0,
                        };
                        self.next_read()
                    }
                    Err(e) => Step::Failed(format!("host {from} could not export the drive: {e}")),
                }
            }
            (
                Phase::Copying { offset, .. },
                MoveReport::Chunk {
                    offset: at, result, ..
                },
            ) if *host == from && at == *offset => match result {
                Ok(data) if !data.is_empty() => Step::Send(vec![(
                    to,
                    MoveOrder::Write {
                        drive,
                        offset: at,
                        data,
                    },
                )]),
                Ok(_) => Step::Failed(format!(
                    "host {from}'s copy of the drive ended early, at byte {at}"
                )),
                Err(e) => Step::Failed(format!("host {from} could not read the drive: {e}")),
            },
            (
                Phase::Copying { offset, .. },
                MoveReport::Written {
                    offset: at, result, ..
                },
            ) if *host == to && at == *offset => match result {
                Ok(()) => self.next_read_after_write(),
                Err(e) => Step::Failed(format!("host {to} could not write the drive: {e}")),
            },
            (Phase::Finishing, MoveReport::Finished { result, .. }) if *host == to => {
                match result {
                    Ok(()) => Step::Done,
                    Err(e) => Step::Failed(format!("host {to} could not verify the copy: {e}")),
                }
            }
            (_, r) => {
                tracing::debug!(drive = %r.drive(), host = %host, "an unexpected drive move answer; ignored");
                Step::Send(Vec::new())
            }
        }
    }

    /// After a chunk was written: the next one, or the check once all are there.
    fn next_read_after_write(&mut self) -> Step {
        if let Phase::Copying { total, offset, .. } = &mut self.phase {
            let len = MOVE_CHUNK_BYTES.min(total.saturating_sub(*offset));
            *offset += len;
        }
        self.next_read()
    }

    /// The next read, or `Finish` when the whole copy is on the target.
    fn next_read(&mut self) -> Step {
        let drive = self.drive;
        let Phase::Copying {
            total,
            sha256,
            offset,
        } = &self.phase
        else {
            return Step::Send(Vec::new());
        };
        if *offset >= *total {
            let finish = MoveOrder::Finish {
                drive,
                size: *total,
                sha256: sha256.clone(),
            };
            self.phase = Phase::Finishing;
            return Step::Send(vec![(self.to.clone(), finish)]);
        }
        let len = MOVE_CHUNK_BYTES.min(total - offset);
        Step::Send(vec![(
            self.from.clone(),
            MoveOrder::Read {
                drive,
                offset: *offset,
                len,
            },
        )])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use backfill_shared::drive_move::Exported;

    fn h(s: &str) -> HostId {
        s.parse().unwrap()
    }

    fn started() -> (Move, oneshot::Receiver<Result<(), NotPrepared>>) {
        let (m, rx, first) = Move::start(DriveId::from_u128(1), h("a"), h("b"), 10 << 20);
        assert_eq!(
            first,
            (
                h("b"),
                MoveOrder::Prepare {
                    drive: DriveId::from_u128(1),
                    size: 10 << 20
                }
            )
        );
        (m, rx)
    }

    fn only(step: Step) -> (HostId, MoveOrder) {
        match step {
            Step::Send(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("expected one order, got {other:?}"),
        }
    }

    #[test]
    fn a_move_prepares_exports_copies_chunk_by_chunk_and_verifies() {
        let d = DriveId::from_u128(1);
        let (mut m, mut rx) = started();
        let (host, order) = only(m.on_report(
            &h("b"),
            MoveReport::Prepared {
                drive: d,
                result: Ok(()),
            },
        ));
        assert_eq!((host, order), (h("a"), MoveOrder::Export { drive: d }));
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        // 2.5 chunks.
        let total = MOVE_CHUNK_BYTES * 2 + MOVE_CHUNK_BYTES / 2;
        let mut next = only(m.on_report(
            &h("a"),
            MoveReport::Exported {
                drive: d,
                result: Ok(Exported {
                    size: total,
                    sha256: "ab".into(),
                }),
            },
        ));
        let mut copied = 0;
        loop {
            let (host, order) = next;
            match order {
                MoveOrder::Read { offset, len, .. } => {
                    assert_eq!((host.as_str(), offset), ("a", copied));
                    assert_eq!(len, MOVE_CHUNK_BYTES.min(total - copied));
                    // A repeat from the wrong host is ignored.
                    assert_eq!(
                        m.on_report(
                            &h("b"),
                            MoveReport::Chunk {
                                drive: d,
                                offset,
                                result: Ok(vec![1])
                            }
                        ),
                        Step::Send(Vec::new())
                    );
                    let (host, w) = only(m.on_report(
                        &h("a"),
                        MoveReport::Chunk {
                            drive: d,
                            offset,
                            result: Ok(vec![0; usize::try_from(len).unwrap()]),
                        },
                    ));
                    assert_eq!(host, h("b"));
                    let MoveOrder::Write { offset: at, .. } = w else {
                        panic!("{w:?}")
                    };
                    next = only(m.on_report(
                        &h("b"),
                        MoveReport::Written {
                            drive: d,
                            offset: at,
                            result: Ok(()),
                        },
                    ));
                    copied += len;
                }
                MoveOrder::Finish { size, sha256, .. } => {
                    assert_eq!((host, size, sha256.as_str()), (h("b"), total, "ab"));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(copied, total);
        assert_eq!(
            m.on_report(
                &h("b"),
                MoveReport::Finished {
                    drive: d,
                    result: Ok(())
                }
            ),
            Step::Done
        );
    }

    #[test]
    fn a_target_without_room_refuses_and_errors_end_the_move() {
        let d = DriveId::from_u128(1);
        let (mut m, mut rx) = started();
        let step = m.on_report(
            &h("b"),
            MoveReport::Prepared {
                drive: d,
                result: Err("needs 10 MiB, 1 MiB free".into()),
            },
        );
        assert!(matches!(step, Step::Failed(ref w) if w.contains("host b cannot take")));
        assert!(
            matches!(rx.try_recv().unwrap(), Err(NotPrepared::Refused(ref w)) if w.contains("1 MiB free"))
        );

        let (mut m, _rx) = started();
        let _ = m.on_report(
            &h("b"),
            MoveReport::Prepared {
                drive: d,
                result: Ok(()),
            },
        );
        let step = m.on_report(
            &h("a"),
            MoveReport::Exported {
                drive: d,
                result: Err("qemu-img: broken".into()),
            },
        );
        assert!(matches!(step, Step::Failed(ref w) if w.contains("could not export")));
        assert_eq!(m.aborts().len(), 2);

        // An empty drive copies in one Finish; a checksum mismatch fails.
        let (mut m, _rx) = started();
        let _ = m.on_report(
            &h("b"),
            MoveReport::Prepared {
                drive: d,
                result: Ok(()),
            },
        );
        let (_, fin) = only(m.on_report(
            &h("a"),
            MoveReport::Exported {
                drive: d,
                result: Ok(Exported {
                    size: 0,
                    sha256: "e3".into(),
                }),
            },
        ));
        assert!(matches!(fin, MoveOrder::Finish { size: 0, .. }));
        let step = m.on_report(
            &h("b"),
            MoveReport::Finished {
                drive: d,
                result: Err("SHA-256 differs".into()),
            },
        );
        assert!(matches!(step, Step::Failed(ref w) if w.contains("could not verify")));
    }
}
