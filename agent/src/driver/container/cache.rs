//! The image cache under `<state_dir>/images`: blobs by digest (`blobs/sha256/<hex>`, written
//! to `tmp/` and renamed in only once their digest is verified), unpacked images
//! (`rootfs/<manifest hex>/`, the read-only lower layer of every container of that image) and
//! one record per image (`records/<manifest hex>.json`, its mtime the image's last use). The
//! bytes of blobs plus unpacked images stay under a bound; the least recently used images
//! that no container uses are evicted to make room.

use super::ContainerError;
use super::spec::ImageConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the cache knows of one unpacked image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The references it was pulled by.
    pub references: Vec<String>,
    /// Hex of its manifest digest (sha256).
    pub manifest: String,
    pub config: ImageConfig,
    /// Hex digests of the blobs it uses (config and layers).
    pub blobs: Vec<String>,
    pub unpacked_bytes: u64,
}

#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    max: u64,
    /// Serialises room-making, commits and evictions.
    lock: Mutex<()>,
    /// Images being pulled or started right now: never evicted.
    pinned: Mutex<BTreeSet<String>>,
}

/// Whether `hex` is 64 lowercase hex digits (a sha256 digest that may become a file name).
pub fn valid_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sha256:<hex>` to `<hex>`, refusing anything else.
pub fn digest_hex(digest: &str) -> Result<&str, ContainerError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if valid_hex(h) => Ok(h),
        _ => Err(ContainerError::Registry(format!(
            "unsupported digest {digest:?}: only sha256"
        ))),
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Cache {
    pub fn new(root: &Path, max: u64) -> Result<Cache, ContainerError> {
        for d in ["blobs/sha256", "rootfs", "records", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Cache {
            root: root.to_owned(),
            max,
            lock: Mutex::new(()),
            pinned: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    pub fn rootfs(&self, hex: &str) -> PathBuf {
        self.root.join("rootfs").join(hex)
    }

    fn record_path(&self, hex: &str) -> PathBuf {
        self.root.join("records").join(format!("{hex}.json"))
    }

    /// A fresh scratch path under `tmp/`.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn pin(&self, hex: &str) {
        self.pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hex.to_owned());
    }

    pub fn unpin(&self, hex: &str) {
        self.pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(hex);
    }

    /// Whether any pull is in flight.
    pub fn any_pinned(&self) -> bool {
        !self
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    pub fn record(&self, hex: &str) -> Option<ImageRecord> {
        if !valid_hex(hex) {
            return None;
        }
        let text = std::fs::read(self.record_path(hex)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every record, least recently used first.
    fn records(&self) -> Vec<(std::time::SystemTime, ImageRecord)> {
        let dir = self.root.join("records");
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_suffix(".json")?;
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((used, self.record(hex)?))
            })
            .collect();
        out.sort_by_key(|(t, r)| (*t, r.manifest.clone()));
        out
    }

    /// The cached image pulled by `reference`, if any.
    pub fn find(&self, reference: &str) -> Option<ImageRecord> {
        self.records()
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.references.iter().any(|x| x == reference))
    }

    /// Marks an image used now (LRU order).
    pub fn touch(&self, hex: &str) {
        let p = self.record_path(hex);
        if let Ok(f) = std::fs::File::options().write(true).open(&p) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Bytes held: every blob file plus every image's unpacked size.
    pub fn used_bytes(&self) -> u64 {
        let blobs: u64 = std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let unpacked: u64 = self.records().iter().map(|(_, r)| r.unpacked_bytes).sum();
        blobs.saturating_add(unpacked)
    }

    /// Evicts least recently used images outside `in_use` (and not pinned) until `need` more
    /// bytes fit under the bound.
    pub fn make_room(&self, need: u64, in_use: &BTreeSet<String>) -> Result<(), ContainerError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if need > self.max {
            return Err(ContainerError::TooLarge {
                need,
                max: self.max,
            });
        }
        let pinned = self
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (_, r) in self.records() {
            if self.used_bytes().saturating_add(need) <= self.max {
                return Ok(());
            }
            if in_use.contains(&r.manifest) || pinned.contains(&r.manifest) {
                continue;
            }
            tracing::info!(image = %r.manifest, references = ?r.references, "evicting the least recently used image from the cache");
            self.evict_locked(&r.manifest);
        }
        let used = self.used_bytes();
        if used.saturating_add(need) <= self.max {
            Ok(())
        } else {
            Err(ContainerError::CacheFull {
                used,
                need,
                max: self.max,
            })
        }
    }

    /// Removes an image: its record, its unpacked tree and the blobs no other image uses.
    fn evict_locked(&self, hex: &str) {
        let Some(r) = self.record(hex) else { return };
        let _ = std::fs::remove_file(self.record_path(hex));
        let _ = std::fs::remove_dir_all(self.rootfs(hex));
        let still: BTreeSet<String> = self
            .records()
            .into_iter()
            .flat_map(|(_, r)| r.blobs)
            .collect();
        for b in r.blobs.iter().filter(|b| !still.contains(*b)) {
            let _ = std::fs::remove_file(self.blob_path(b));
        }
    }

    /// Moves a verified blob into place.
    pub fn commit_blob(&self, tmp: &Path, hex: &str) -> Result<(), ContainerError> {
        let dst = self.blob_path(hex);
        std::fs::rename(tmp, &dst).map_err(io(&dst))
    }

    /// Moves an unpacked image into place and records it (atomically: the record last).
    pub fn commit_image(
        &self,
        tmp_rootfs: &Path,
        record: &ImageRecord,
    ) -> Result<(), ContainerError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dst = self.rootfs(&record.manifest);
        if dst.exists() {
            let _ = std::fs::remove_dir_all(&dst);
        }
        std::fs::rename(tmp_rootfs, &dst).map_err(io(&dst))?;
        self.write_record(record)
    }

    /// Adds `reference` to an image's record.
    pub fn add_reference(&self, hex: &str, reference: &str) -> Result<(), ContainerError> {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut r) = self.record(hex)
            && !r.references.iter().any(|x| x == reference)
        {
            r.references.push(reference.to_owned());
            self.write_record(&r)?;
        }
        Ok(())
    }

    fn write_record(&self, record: &ImageRecord) -> Result<(), ContainerError> {
        let path = self.record_path(&record.manifest);
        let tmp = self.tmp_path("record");
        let text = serde_json::to_vec(record).map_err(|e| ContainerError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Removes what a crashed or failed pull left: scratch files, blobs no image uses, unpacked
    /// trees without a record. Pinned images (pulls in flight) are left alone.
    pub fn sweep(&self) {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pinned = self
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !pinned.is_empty() {
            return; // a pull in flight owns scratch files and fresh blobs
        }
        let records = self.records();
        let blobs: BTreeSet<String> = records.iter().flat_map(|(_, r)| r.blobs.clone()).collect();
        let images: BTreeSet<String> = records.iter().map(|(_, r)| r.manifest.clone()).collect();
        let names = |d: &str| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(self.root.join(d))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        };
        for (_, p) in names("tmp") {
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        for (n, p) in names("blobs/sha256") {
            if !blobs.contains(&n) {
                let _ = std::fs::remove_file(p);
            }
        }
        for (n, p) in names("rootfs") {
            if !images.contains(&n) {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

/// Writes one blob to a scratch file, hashing as it goes; [`BlobWriter::finish`] moves it into
/// the cache only if it has the size and digest its descriptor promised. Dropped unfinished,
/// the scratch file goes.
pub struct BlobWriter {
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hash: ring::digest::Context,
    written: u64,
    hex: String,
    size: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("tmp", &self.tmp)
            .field("written", &self.written)
            .field("hex", &self.hex)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    pub fn new(cache: &Cache, hex: &str, size: u64) -> Result<BlobWriter, ContainerError> {
        let tmp = cache.tmp_path("blob");
        let file = std::fs::File::create_new(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter {
            tmp,
            file: Some(file),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
            hex: hex.to_owned(),
            size,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ContainerError> {
        self.written = self.written.saturating_add(chunk.len() as u64);
        if self.written > self.size {
            return Err(ContainerError::Oversized {
                digest: format!("sha256:{}", self.hex),
                size: self.size,
            });
        }
        self.hash.update(chunk);
        match self.file.as_mut() {
            Some(f) => f.write_all(chunk).map_err(io(&self.tmp)),
            None => Ok(()),
        }
    }

    /// Whether what was written so far is the whole blob, with its digest.
    pub fn verify(&self) -> Result<(), ContainerError> {
        let actual = hex_of(self.hash.clone().finish().as_ref());
        if actual != self.hex || self.written != self.size {
            return Err(ContainerError::Digest {
                expected: format!("sha256:{} ({} bytes)", self.hex, self.size),
                actual: format!("sha256:{actual} ({} bytes)", self.written),
            });
        }
        Ok(())
    }

    /// Verifies and commits the blob.
    pub fn finish(mut self, cache: &Cache) -> Result<(), ContainerError> {
        self.verify()?;
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io(&self.tmp))?;
        }
        cache.commit_blob(&self.tmp, &self.hex)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub fn sha256_hex(data: &[u8]) -> String {
    hex_of(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(cache: &Cache, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        let mut w = BlobWriter::new(cache, &hex, data.len() as u64).unwrap();
        w.write(data).unwrap();
        w.finish(cache).unwrap();
        hex
    }

    fn image(cache: &Cache, name: &str, blob: &[u8], unpacked: u64) -> String {
        let b = put(cache, blob);
        let manifest = sha256_hex(name.as_bytes());
        let tmp = cache.tmp_path("rootfs");
        std::fs::create_dir_all(&tmp).unwrap();
        cache
            .commit_image(
                &tmp,
                &ImageRecord {
                    references: vec![name.into()],
                    manifest: manifest.clone(),
                    config: ImageConfig::default(),
                    blobs: vec![b],
                    unpacked_bytes: unpacked,
                },
            )
            .unwrap();
        manifest
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1 << 20).unwrap();
        let hex = sha256_hex(b"hello");
        let mut w = BlobWriter::new(&cache, &hex, 5).unwrap();
        w.write(b"hellO").unwrap();
        let err = w.finish(&cache).unwrap_err();
        assert!(matches!(err, ContainerError::Digest { .. }), "{err}");
        assert!(err.to_string().contains(&hex), "{err}");
        assert!(!cache.blob_path(&hex).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        // Longer than the descriptor says: refused while writing.
        let mut w = BlobWriter::new(&cache, &hex, 5).unwrap();
        assert!(matches!(
            w.write(b"hello!"),
            Err(ContainerError::Oversized { .. })
        ));
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(put(&cache, b"hello"), hex);
        assert!(cache.blob_path(&hex).exists());
    }

    #[test]
    fn least_recently_used_images_not_in_use_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1000).unwrap();
        let a = image(&cache, "a", &[1; 100], 200);
        let b = image(&cache, "b", &[2; 100], 200);
        let c = image(&cache, "c", &[3; 100], 200);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (i, h) in [&a, &b, &c].into_iter().enumerate() {
            let f = std::fs::File::options()
                .write(true)
                .open(cache.record_path(h))
                .unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        cache.touch(&a); // a is now the most recent; b the least
        assert_eq!(cache.used_bytes(), 900);
        cache.make_room(300, &BTreeSet::new()).unwrap();
        assert!(cache.record(&b).is_none(), "b was the least recently used");
        assert!(!cache.rootfs(&b).exists());
        assert!(cache.record(&a).is_some() && cache.record(&c).is_some());
        assert_eq!(cache.used_bytes(), 600);
        // In use: never evicted, and then there is no room.
        let in_use: BTreeSet<String> = [a.clone(), c.clone()].into();
        let err = cache.make_room(500, &in_use).unwrap_err();
        assert!(matches!(err, ContainerError::CacheFull { .. }), "{err}");
        let err = cache.make_room(1001, &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("cache_max_bytes"), "{err}");
        assert_eq!(cache.find("c").map(|r| r.manifest), Some(c));
    }

    #[test]
    fn sweep_removes_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1 << 20).unwrap();
        let kept = image(&cache, "a", b"kept", 1);
        let orphan = put(&cache, b"orphan");
        std::fs::write(cache.tmp_path("blob"), b"half").unwrap();
        std::fs::create_dir_all(cache.rootfs(&sha256_hex(b"x"))).unwrap();
        cache.sweep();
        assert!(!cache.blob_path(&orphan).exists());
        assert!(cache.rootfs(&kept).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("rootfs"))
                .unwrap()
                .count(),
            1
        );
    }
}
