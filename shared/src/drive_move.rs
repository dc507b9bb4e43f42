//! Moving a drive between hosts over the agent link (docs/drives.md, "Moving a drive"). Agents
//! talk only to the coordinator, so it relays: it asks the source for a standalone copy and its
//! checksum, then for one chunk at a time, hands each to the target, and has the target check
//! the whole (size and SHA-256) and put it in place. One chunk is in flight per move, so neither
//! link buffers more than a chunk.

use crate::drive::DriveId;
use serde::{Deserialize, Serialize};

/// Bytes per chunk: well under the link's frame limit (`MAX_FRAME_BYTES`).
pub const MOVE_CHUNK_BYTES: u64 = 1 << 20;

/// Coordinator -> agent: one step of a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveOrder {
    /// To the target: make room for a drive of at most `size` bytes (refused when the drive is
    /// already here or the disk lacks the space). Answered by `Prepared`.
    Prepare { drive: DriveId, size: u64 },
    /// To the source: make a standalone copy (no backing file) and measure it. Answered by
    /// `Exported`.
    Export { drive: DriveId },
    /// To the source: `len` bytes of the copy from `offset`. Answered by `Chunk`.
    Read {
        drive: DriveId,
        offset: u64,
        len: u64,
    },
    /// To the target: bytes of the copy at `offset`. Answered by `Written`.
    Write {
        drive: DriveId,
        offset: u64,
        data: Vec<u8>,
    },
    /// To the target: the copy is whole when it has `size` bytes and this SHA-256 (hex); put it
    /// in place. Answered by `Finished`.
    Finish {
        drive: DriveId,
        size: u64,
        sha256: String,
    },
    /// To either: drop what this move left here (the source's copy, the target's partial file);
    /// never the drive itself. Not answered.
    Abort { drive: DriveId },
}

/// Agent -> coordinator: the answer to a [`MoveOrder`]; `Err` says why it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveReport {
    Prepared {
        drive: DriveId,
        result: Result<(), String>,
    },
    Exported {
        drive: DriveId,
        result: Result<Exported, String>,
    },
    Chunk {
        drive: DriveId,
        offset: u64,
        result: Result<Vec<u8>, String>,
    },
    Written {
        drive: DriveId,
        offset: u64,
        result: Result<(), String>,
    },
    Finished {
        drive: DriveId,
        result: Result<(), String>,
    },
}

impl MoveReport {
    pub fn drive(&self) -> DriveId {
        match self {
            MoveReport::Prepared { drive, .. }
            | MoveReport::Exported { drive, .. }
            | MoveReport::Chunk { drive, .. }
            | MoveReport::Written { drive, .. }
            | MoveReport::Finished { drive, .. } => *drive,
        }
    }
}

/// The source's standalone copy: its length in bytes and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub size: u64,
    pub sha256: String,
}
