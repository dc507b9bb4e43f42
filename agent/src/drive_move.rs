//! This host's part in moving a drive to another host (the coordinator relays the copy; see
//! `backfill_shared::drive_move`). As the source: a standalone copy of the drive
//! (`<uuid>.qcow2.export`, no backing file), its length and SHA-256, and chunks of it. As the
//! target: the chunks written into `<uuid>.qcow2.move`, checked whole (length and SHA-256),
//! synced and renamed to `<uuid>.qcow2`. Neither file is reported as a drive; `Abort` removes
//! both, never the drive.

use crate::drives::DriveStore;
use backfill_shared::drive::DriveId;
use backfill_shared::drive_move::{Exported, MOVE_CHUNK_BYTES, MoveOrder, MoveReport};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn export_path(store: &DriveStore, id: &DriveId) -> PathBuf {
    store.path(id).with_extension("qcow2.export")
}

fn incoming_path(store: &DriveStore, id: &DriveId) -> PathBuf {
    store.path(id).with_extension("qcow2.move")
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Runs the move orders of one link session in order, each off the async threads (no thread
/// is held while no move runs); each answer goes to the returned receiver. Ends when the sender
/// is dropped (the session ended).
pub fn worker(
    store: Option<Arc<DriveStore>>,
) -> (
    tokio::sync::mpsc::UnboundedSender<MoveOrder>,
    tokio::sync::mpsc::Receiver<MoveReport>,
) {
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel::<MoveOrder>();
    let (report_tx, report_rx) = tokio::sync::mpsc::channel::<MoveReport>(4);
    tokio::spawn(async move {
        let mut first = true;
        while let Some(order) = order_rx.recv().await {
            let store = store.clone();
            // Before this session's first step: the coordinator failed the moves earlier
            // sessions carried, so what they left here is garbage.
            let clean = std::mem::take(&mut first);
            let answer = tokio::task::spawn_blocking(move || match &store {
                Some(s) => {
                    if clean {
                        clean_up(s);
                    }
                    handle(s, order)
                }
                None => refuse(order, "this host does not run VMs, so it holds no drives"),
            })
            .await;
            match answer {
                Ok(Some(r)) => {
                    if report_tx.send(r).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "a drive move step failed to run"),
            }
        }
    });
    (order_tx, report_rx)
}

/// Removes the files moves left (`*.qcow2.export`, `*.qcow2.move`); never a drive.
fn clean_up(store: &DriveStore) {
    let Ok(dir) = std::fs::read_dir(store.dir()) else {
        return;
    };
    for e in dir.filter_map(Result::ok) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".qcow2.export") || name.ends_with(".qcow2.move") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(path = %e.path().display(), "removed what a drive move left")
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove what a drive move left")
                }
            }
        }
    }
}

/// The answer that `order` could not be carried out, for `why`.
fn refuse(order: MoveOrder, why: &str) -> Option<MoveReport> {
    let e = Err(why.to_owned());
    Some(match order {
        MoveOrder::Prepare { drive, .. } => MoveReport::Prepared { drive, result: e },
        MoveOrder::Export { drive } => MoveReport::Exported {
            drive,
            result: Err(why.to_owned()),
        },
        MoveOrder::Read { drive, offset, .. } => MoveReport::Chunk {
            drive,
            offset,
            result: Err(why.to_owned()),
        },
        MoveOrder::Write { drive, offset, .. } => MoveReport::Written {
            drive,
            offset,
            result: e,
        },
        MoveOrder::Finish { drive, .. } => MoveReport::Finished { drive, result: e },
        MoveOrder::Abort { .. } => return None,
    })
}

/// Carries out one step (blocking) and answers it (`Abort` is not answered).
pub fn handle(store: &DriveStore, order: MoveOrder) -> Option<MoveReport> {
    Some(match order {
        MoveOrder::Prepare { drive, size } => MoveReport::Prepared {
            drive,
            result: prepare(store, &drive, size),
        },
        MoveOrder::Export { drive } => MoveReport::Exported {
            drive,
            result: export(store, &drive),
        },
        MoveOrder::Read { drive, offset, len } => MoveReport::Chunk {
            drive,
            offset,
            result: read(&export_path(store, &drive), offset, len),
        },
        MoveOrder::Write {
            drive,
            offset,
            data,
        } => MoveReport::Written {
            drive,
            offset,
            result: write(&incoming_path(store, &drive), offset, &data),
        },
        MoveOrder::Finish {
            drive,
            size,
            sha256,
        } => MoveReport::Finished {
            drive,
            result: finish(store, &drive, size, &sha256),
        },
        MoveOrder::Abort { drive } => {
            for p in [export_path(store, &drive), incoming_path(store, &drive)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {
                        tracing::info!(drive = %drive, path = %p.display(), "drive move: removed")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(drive = %drive, path = %p.display(), error = %e, "drive move: cannot remove")
                    }
                }
            }
            return None;
        }
    })
}

/// Room for a drive of at most `size` bytes, and an empty file to write it into.
fn prepare(store: &DriveStore, id: &DriveId, size: u64) -> Result<(), String> {
    if store.path(id).exists() {
        return Err(format!("drive {id} is already on this host"));
    }
    let dir = store.dir();
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let free = free_bytes(dir)?;
    if free < size {
        return Err(format!(
            "not enough space in {}: the drive needs up to {size} bytes, {free} are free",
            dir.display()
        ));
    }
    let p = incoming_path(store, id);
    std::fs::File::create(&p).map_err(err(&p))?;
    Ok(())
}

/// Bytes free to this (unprivileged or not) process on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", dir.display()))?;
    // SAFETY: statvfs only writes the struct it is given; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `c` outlives the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut st) };
    if rc != 0 {
        return Err(err(dir)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A standalone copy of the drive (a library clone's backing file flattened into it), its
/// length and SHA-256.
fn export(store: &DriveStore, id: &DriveId) -> Result<Exported, String> {
    let src = store.path(id);
    if !src.is_file() {
        return Err(format!("drive {id} is not on this host"));
    }
    let out = export_path(store, id);
    let _ = std::fs::remove_file(&out);
    store
        .convert(&src, &out)
        .map_err(|e| format!("copying drive {id}: {e}"))?;
    let size = std::fs::metadata(&out).map_err(err(&out))?.len();
    Ok(Exported {
        size,
        sha256: sha256_hex(&out)?,
    })
}

fn read(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(err(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(err(path))?;
    // Never more than a chunk, whatever was asked.
    let len = usize::try_from(len.min(MOVE_CHUNK_BYTES)).unwrap_or(0);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f
            .read(buf.get_mut(got..).unwrap_or_default())
            .map_err(err(path))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

fn write(path: &Path, offset: u64, data: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(err(path))?;
    f.write_all(data).map_err(err(path))
}

/// The copy is whole (length and checksum), synced, and in place as the drive.
fn finish(store: &DriveStore, id: &DriveId, size: u64, sha256: &str) -> Result<(), String> {
    let p = incoming_path(store, id);
    let f = std::fs::File::open(&p).map_err(err(&p))?;
    let have = f.metadata().map_err(err(&p))?.len();
    if have != size {
        return Err(format!("the copy has {have} bytes, the source's {size}"));
    }
    let got = sha256_hex(&p)?;
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(format!(
            "the copy's SHA-256 is {got}, the source's {sha256}"
        ));
    }
    f.sync_all().map_err(err(&p))?;
    let dest = store.path(id);
    if dest.exists() {
        return Err(format!("drive {id} is already on this host"));
    }
    std::fs::rename(&p, &dest).map_err(err(&dest))?;
    let dir = store.dir();
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))?;
    tracing::info!(drive = %id, bytes = size, "drive moved here");
    Ok(())
}

fn sha256_hex(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(err(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const QEMU_IMG: &str = "/usr/bin/qemu-img";

    fn store(root: &Path) -> DriveStore {
        std::fs::create_dir_all(root.join("drives")).unwrap();
        DriveStore::new(root, &root.join("images"), Path::new(QEMU_IMG))
    }

    fn answer(s: &DriveStore, o: MoveOrder) -> MoveReport {
        handle(s, o).unwrap()
    }

    #[test]
    fn a_drive_is_exported_copied_in_chunks_checked_and_put_in_place() {
        if !Path::new(QEMU_IMG).is_file() {
            eprintln!("SKIP: no qemu-img");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (store(&tmp.path().join("a")), store(&tmp.path().join("b")));
        let id = DriveId::from_u128(7);
        // A drive with known guest bytes (2.5 chunks of them).
        let raw = tmp.path().join("guest.raw");
        let guest: Vec<u8> = (0..(MOVE_CHUNK_BYTES * 5 / 2))
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        std::fs::write(&raw, &guest).unwrap();
        src.convert(&raw, &src.path(&id)).unwrap();

        // Not on the target yet, room there; the source cannot take it (it is there).
        let MoveReport::Prepared { result, .. } =
            answer(&src, MoveOrder::Prepare { drive: id, size: 1 })
        else {
            panic!()
        };
        assert!(result.unwrap_err().contains("already on this host"));
        let MoveReport::Prepared { result, .. } = answer(
            &dst,
            MoveOrder::Prepare {
                drive: id,
                size: u64::MAX,
            },
        ) else {
            panic!()
        };
        assert!(result.unwrap_err().contains("not enough space"));
        let MoveReport::Prepared { result, .. } = answer(
            &dst,
            MoveOrder::Prepare {
                drive: id,
                size: 1 << 20,
            },
        ) else {
            panic!()
        };
        result.unwrap();

        let MoveReport::Exported { result, .. } = answer(&src, MoveOrder::Export { drive: id })
        else {
            panic!()
        };
        let x = result.unwrap();
        let mut offset = 0;
        while offset < x.size {
            let MoveReport::Chunk { result, .. } = answer(
                &src,
                MoveOrder::Read {
                    drive: id,
                    offset,
                    len: MOVE_CHUNK_BYTES,
                },
            ) else {
                panic!()
            };
            let data = result.unwrap();
            assert!(!data.is_empty() && data.len() as u64 <= MOVE_CHUNK_BYTES);
            let n = data.len() as u64;
            let MoveReport::Written { result, .. } = answer(
                &dst,
                MoveOrder::Write {
                    drive: id,
                    offset,
                    data,
                },
            ) else {
                panic!()
            };
            result.unwrap();
            offset += n;
        }
        // A wrong checksum is refused and nothing is put in place.
        let MoveReport::Finished { result, .. } = answer(
            &dst,
            MoveOrder::Finish {
                drive: id,
                size: x.size,
                sha256: "00".repeat(32),
            },
        ) else {
            panic!()
        };
        assert!(result.unwrap_err().contains("SHA-256"));
        assert!(!dst.path(&id).exists());
        let MoveReport::Finished { result, .. } = answer(
            &dst,
            MoveOrder::Finish {
                drive: id,
                size: x.size,
                sha256: x.sha256.clone(),
            },
        ) else {
            panic!()
        };
        result.unwrap();
        // The target's drive shows the same guest bytes; it is reported, the move's files not.
        let back = tmp.path().join("back.raw");
        let ok = std::process::Command::new(QEMU_IMG)
            .args(["convert", "-O", "raw"])
            .arg(dst.path(&id))
            .arg(&back)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert!(std::fs::read(&back).unwrap() == guest);
        assert_eq!(dst.report().drives.len(), 1);
        assert_eq!(src.report().drives.len(), 1, "the .export file is no drive");
        assert!(handle(&src, MoveOrder::Abort { drive: id }).is_none());
        assert!(!export_path(&src, &id).exists());
        assert!(src.path(&id).is_file(), "an abort never removes the drive");
    }
}
