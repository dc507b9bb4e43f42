//! Drives on this host: one qcow2 file per drive, `<state_dir>/drives/<uuid>.qcow2`, made,
//! grown and deleted as the coordinator's [`DriveOrders`] say, and reported back.
//!
//! - A blank drive is `qemu-img create`; a library clone is a copy-on-write qcow2 on an image
//!   of `[vm] images_dir` (checked against its SHA-256 first when the operator declared one);
//!   a clone of a drive is a full copy (`qemu-img convert`), independent of its source.
//! - A new drive is made under `<uuid>.qcow2.part` and renamed into place, so a crash never
//!   leaves a half-made drive that looks whole.
//! - Only an explicit delete removes a drive; a drive the orders do not name is reported and
//!   left alone (a coordinator that lost track of it must not cost a tenant their data).
//! - A drive that could not be made is reported failed, with the reason, until it is deleted.

use crate::images;
use backfill_shared::drive::{
    DesiredDrive, DriveId, DriveOrders, DriveReport, DriveSource, ObservedDrive, ObservedDriveState,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DriveError + '_ {
    move |source| DriveError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Default)]
struct Known {
    /// Virtual sizes of the drives made or read here.
    sizes: BTreeMap<DriveId, u64>,
    /// Drives that could not be made, and why (until they are deleted).
    failed: BTreeMap<DriveId, String>,
}

#[derive(Debug)]
pub struct DriveStore {
    dir: PathBuf,
    images_dir: PathBuf,
    qemu_img: PathBuf,
    known: Mutex<Known>,
    /// Held through a pass of [`DriveStore::apply`]: passes never overlap.
    pass: Mutex<()>,
}

impl DriveStore {
    /// The drives of `<state_dir>/drives`, made with `qemu_img` from the images of
    /// `images_dir`.
    pub fn new(state_dir: &Path, images_dir: &Path, qemu_img: &Path) -> DriveStore {
        DriveStore {
            dir: state_dir.join("drives"),
            images_dir: images_dir.to_owned(),
            qemu_img: qemu_img.to_owned(),
            known: Mutex::new(Known::default()),
            pass: Mutex::new(()),
        }
    }

    /// Where drive `id` lives (the id is a UUID: a safe file name).
    pub fn path(&self, id: &DriveId) -> PathBuf {
        self.dir.join(format!("{id}.qcow2"))
    }

    /// The directory of this host's drives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A standalone copy of the qcow2 `src` (any backing file flattened in) at `dst`.
    pub fn convert(&self, src: &Path, dst: &Path) -> Result<(), DriveError> {
        self.qemu_img(&["convert", "-U", "-O", "qcow2"], &[src, dst], &[])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Carries out `orders` (blocking: copies may take a while) and reports what is here.
    pub fn apply(&self, orders: &DriveOrders) -> DriveReport {
        let _pass = self
            .pass
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &orders.delete {
            for p in [self.path(id), self.path(id).with_extension("qcow2.part")] {
                match std::fs::remove_file(&p) {
                    Ok(()) => tracing::info!(drive = %id, "drive deleted"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(drive = %id, path = %p.display(), error = %e, "cannot delete a drive")
                    }
                }
            }
            let mut k = self.lock();
            k.sizes.remove(id);
            k.failed.remove(id);
        }
        for d in &orders.drives {
            if orders.delete.contains(&d.id) || self.lock().failed.contains_key(&d.id) {
                continue;
            }
            if let Err(e) = self.ensure(d) {
                tracing::warn!(drive = %d.id, error = %e, "cannot make or grow a drive");
                self.lock().failed.insert(d.id, e.to_string());
            }
        }
        self.report()
    }

    /// Makes `d` if it is not here, and grows it to its size.
    fn ensure(&self, d: &DesiredDrive) -> Result<(), DriveError> {
        let path = self.path(&d.id);
        let have = match self.lock().sizes.get(&d.id) {
            Some(s) if path.is_file() => Some(*s),
            _ => None,
        };
        let have = match have {
            Some(s) => Some(s),
            None if path.is_file() => Some(self.size_of(&path)?),
            None => None,
        };
        let size = match have {
            Some(s) if s >= d.size => s,
            Some(_) => {
                self.qemu_img(&["resize", "-q"], &[&path], &[&d.size.to_string()])?;
                tracing::info!(drive = %d.id, size = d.size, "drive grown");
                d.size
            }
            None => {
                let started = std::time::Instant::now();
                self.make(d, &path)?;
                let size = self.size_of(&path)?;
                tracing::info!(drive = %d.id, size, elapsed_ms = started.elapsed().as_millis() as u64, "drive made");
                size
            }
        };
        self.lock().sizes.insert(d.id, size);
        Ok(())
    }

    fn make(&self, d: &DesiredDrive, path: &Path) -> Result<(), DriveError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let part = path.with_extension("qcow2.part");
        let _ = std::fs::remove_file(&part);
        let size = d.size.to_string();
        match &d.source {
            DriveSource::Blank => {
                self.qemu_img(&["create", "-q", "-f", "qcow2"], &[&part], &[&size])?;
            }
            DriveSource::Library { image, sha256 } => {
                let src = images::resolve(&self.images_dir, image)
                    .map_err(|e| DriveError::Failed(e.to_string()))?;
                if let Some(want) = sha256 {
                    check_sha256(&src, want)?;
                }
                let (format, virtual_size) = images::info(&self.qemu_img, &src)
                    .map_err(|e| DriveError::Failed(e.to_string()))?;
                if format != "qcow2" && format != "raw" {
                    return Err(DriveError::Failed(format!(
                        "library image {image:?} is a {format} image; drives are qcow2 or raw"
                    )));
                }
                let size = d.size.max(virtual_size).to_string();
                self.qemu_img(
                    &["create", "-q", "-f", "qcow2", "-F", &format, "-b"],
                    &[&src, &part],
                    &[&size],
                )?;
            }
            DriveSource::Clone { drive } => {
                let src = self.path(drive);
                if !src.is_file() {
                    return Err(DriveError::Failed(format!(
                        "the drive {drive} to clone is not on this host"
                    )));
                }
                // -U: the source may be open (by a stopped VM's leftover lock); the coordinator
                // clones only drives no running server writes to.
                self.qemu_img(&["convert", "-U", "-O", "qcow2"], &[&src, &part], &[])?;
                if self.size_of(&part)? < d.size {
                    self.qemu_img(&["resize", "-q"], &[&part], &[&size])?;
                }
            }
        }
        std::fs::rename(&part, path).map_err(io(path))
    }

    fn size_of(&self, path: &Path) -> Result<u64, DriveError> {
        images::info(&self.qemu_img, path)
            .map(|(_, size)| size)
            .map_err(|e| DriveError::Failed(e.to_string()))
    }

    fn qemu_img(&self, args: &[&str], paths: &[&Path], tail: &[&str]) -> Result<(), DriveError> {
        let out = Command::new(&self.qemu_img)
            .args(args)
            .args(paths)
            .args(tail)
            .output()
            .map_err(io(&self.qemu_img))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DriveError::Failed(format!(
                "qemu-img {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The drives here (their sizes as last made or read) and those that failed.
    pub fn report(&self) -> DriveReport {
        let mut ids: Vec<DriveId> = std::fs::read_dir(&self.dir)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".qcow2")?
                            .parse::<DriveId>()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        let mut drives = Vec::new();
        for id in ids {
            let known = self.lock().sizes.get(&id).copied();
            let size = match known {
                Some(s) => s,
                None => match self.size_of(&self.path(&id)) {
                    Ok(s) => {
                        self.lock().sizes.insert(id, s);
                        s
                    }
                    Err(e) => {
                        tracing::warn!(drive = %id, error = %e, "cannot read a drive's size");
                        0
                    }
                },
            };
            drives.push(ObservedDrive {
                id,
                size,
                state: ObservedDriveState::Ready,
            });
        }
        for (id, reason) in &self.lock().failed {
            drives.push(ObservedDrive {
                id: *id,
                size: 0,
                state: ObservedDriveState::Failed {
                    reason: reason.clone(),
                },
            });
        }
        DriveReport { drives }
    }
}

/// The file's SHA-256 is `want` (hex, any case).
fn check_sha256(path: &Path, want: &str) -> Result<(), DriveError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let got: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(DriveError::Failed(format!(
            "{}: SHA-256 is {got}, the operator declared {want}",
            path.display()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(root: &Path) -> Option<DriveStore> {
        let qemu_img = Path::new("/usr/bin/qemu-img");
        if !qemu_img.is_file() {
            eprintln!("SKIP: no /usr/bin/qemu-img (install qemu-utils)");
            return None;
        }
        let images = root.join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::File::create(images.join("lib.raw"))
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        Some(DriveStore::new(root, &images, qemu_img))
    }

    fn want(id: u128, size: u64, source: DriveSource) -> DesiredDrive {
        DesiredDrive {
            id: DriveId::from_u128(id),
            size,
            source,
        }
    }

    fn state(r: &DriveReport, id: u128) -> Option<(u64, ObservedDriveState)> {
        r.drives
            .iter()
            .find(|d| d.id == DriveId::from_u128(id))
            .map(|d| (d.size, d.state.clone()))
    }

    #[test]
    fn drives_are_made_grown_cloned_and_deleted_only_when_told() {
        let root = tempfile::tempdir().unwrap();
        let Some(s) = store(root.path()) else {
            return;
        };
        let lib = DriveSource::Library {
            image: "lib.raw".into(),
            sha256: None,
        };
        let mut orders = DriveOrders {
            drives: vec![
                want(1, 2 << 20, DriveSource::Blank),
                want(2, 1 << 20, lib.clone()),
            ],
            delete: Vec::new(),
        };
        let r = s.apply(&orders);
        assert_eq!(state(&r, 1), Some((2 << 20, ObservedDriveState::Ready)));
        // A library clone is never smaller than its image.
        assert_eq!(state(&r, 2), Some((4 << 20, ObservedDriveState::Ready)));
        // Grown, never shrunk; a clone of a drive; a bad checksum fails that drive alone.
        orders.drives[0].size = 8 << 20;
        orders.drives.push(want(
            3,
            1,
            DriveSource::Clone {
                drive: DriveId::from_u128(1),
            },
        ));
        orders.drives.push(want(
            4,
            1 << 20,
            DriveSource::Library {
                image: "lib.raw".into(),
                sha256: Some("00".repeat(32)),
            },
        ));
        orders.drives.push(want(
            5,
            1 << 20,
            DriveSource::Library {
                image: "../etc/passwd".into(),
                sha256: None,
            },
        ));
        let r = s.apply(&orders);
        assert_eq!(state(&r, 1), Some((8 << 20, ObservedDriveState::Ready)));
        assert_eq!(state(&r, 3), Some((8 << 20, ObservedDriveState::Ready)));
        assert!(
            matches!(state(&r, 4), Some((0, ObservedDriveState::Failed { reason })) if reason.contains("SHA-256"))
        );
        assert!(matches!(
            state(&r, 5),
            Some((0, ObservedDriveState::Failed { .. }))
        ));
        assert!(!s.path(&DriveId::from_u128(4)).exists());
        // Orders that no longer name a drive leave it alone; a delete removes it.
        let r = s.apply(&DriveOrders::default());
        assert!(state(&r, 1).is_some());
        let r = s.apply(&DriveOrders {
            drives: Vec::new(),
            delete: vec![DriveId::from_u128(1), DriveId::from_u128(4)],
        });
        assert!(state(&r, 1).is_none() && state(&r, 4).is_none());
        assert!(
            state(&r, 3).is_some(),
            "a clone does not depend on its source"
        );
        // A new store on the same directory (an agent restart) finds the drives.
        let again = DriveStore::new(
            root.path(),
            &root.path().join("images"),
            Path::new("/usr/bin/qemu-img"),
        );
        assert_eq!(again.report().drives.len(), 2);
    }
}
