//! Unpacking image layers (tar, optionally gzip) into a root filesystem, safely: nothing is
//! ever written outside the root. Entry paths with `..` or an absolute path are refused;
//! the directories an entry goes through are resolved inside the root (a symlink, absolute or
//! not, is followed as the container would see it, never to the host); hard links must point
//! at a file inside the root. OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) delete what lower
//! layers put there. Devices are skipped (a container's /dev is a tmpfs); set-user-ID and
//! set-group-ID bits are dropped.

use super::ContainerError;
use super::cache::io;
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The most symlinks followed while resolving one path (as the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

fn bad(layer: &str, reason: impl Into<String>) -> ContainerError {
    ContainerError::Layer {
        layer: layer.to_owned(),
        reason: reason.into(),
    }
}

/// An entry's path as plain components relative to the root: `./` is dropped; `..` and
/// absolute paths are refused.
pub fn clean(layer: &str, path: &Path) -> Result<PathBuf, ContainerError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(
                    layer,
                    format!("entry {} goes up with '..'", path.display()),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(
                    layer,
                    format!("entry {} is an absolute path", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Resolves `rel` (plain components) under `root`, following symlinks as if `root` were `/`:
/// the answer is always inside `root`. The last component is followed too when `follow_last`.
pub fn resolve_in_root(
    root: &Path,
    rel: &Path,
    follow_last: bool,
) -> Result<PathBuf, std::io::Error> {
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        if name == "." {
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&name);
        let is_last = pending.is_empty();
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !is_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Unpacks one layer (gzip-compressed or plain tar, told apart by its first bytes) into
/// `root`. Counts the bytes of regular files against `budget` and fails once it is spent.
/// Answers the bytes written.
pub fn unpack_layer(
    layer: &str,
    mut reader: impl Read,
    root: &Path,
    budget: &mut u64,
    cancel: &AtomicBool,
) -> Result<u64, ContainerError> {
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = reader
            .read(&mut magic[got..])
            .map_err(|e| bad(layer, e.to_string()))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(reader);
    if got == 2 && magic == [0x1f, 0x8b] {
        unpack_tar(
            layer,
            flate2::read::GzDecoder::new(chained),
            root,
            budget,
            cancel,
        )
    } else {
        unpack_tar(layer, chained, root, budget, cancel)
    }
}

fn unpack_tar(
    layer: &str,
    reader: impl Read,
    root: &Path,
    budget: &mut u64,
    cancel: &AtomicBool,
) -> Result<u64, ContainerError> {
    let mut archive = tar::Archive::new(reader);
    let mut written = 0u64;
    // What this layer made: an opaque whiteout hides only what lower layers had.
    let mut ours: BTreeSet<PathBuf> = BTreeSet::new();
    let entries = archive.entries().map_err(|e| bad(layer, e.to_string()))?;
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return Err(bad(layer, "cancelled"));
        }
        let mut entry = entry.map_err(|e| bad(layer, format!("not a tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(layer, e.to_string()))?
            .into_owned();
        let rel = clean(layer, &raw)?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
        let parent = resolve_in_root(root, &parent_rel, true).map_err(io(&rel))?;
        if name == ".wh..wh..opq" {
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let child_rel = parent_rel.join(child.file_name());
                if !ours.contains(&child_rel) {
                    remove_any(&child.path());
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(bad(layer, format!("bad whiteout {}", raw.display())));
            }
            remove_any(&parent.join(hidden));
            continue;
        }
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        // The parent must really be a directory inside the root (not a file, not a link).
        let pm = std::fs::symlink_metadata(&parent).map_err(io(&parent))?;
        if !pm.is_dir() {
            return Err(bad(
                layer,
                format!("{}: parent is not a directory", raw.display()),
            ));
        }
        let target = parent.join(&name);
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o1777; // no setuid/setgid
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
        let existing = std::fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&target);
            }
            if !target.is_dir() {
                std::fs::create_dir(&target).map_err(io(&target))?;
            }
            set_perm(&target, mode)?;
        } else {
            if existing.is_some() {
                remove_any(&target);
            }
            if kind.is_file() || kind == tar::EntryType::Continuous {
                let size = header.size().unwrap_or(0);
                if size > *budget {
                    return Err(ContainerError::TooLarge {
                        need: written.saturating_add(size),
                        max: *budget,
                    });
                }
                let mut f = std::fs::File::create_new(&target).map_err(io(&target))?;
                let n = std::io::copy(&mut entry, &mut f).map_err(io(&target))?;
                *budget = budget.saturating_sub(n);
                written = written.saturating_add(n);
                set_perm(&target, mode)?;
            } else if kind.is_symlink() {
                let link = entry
                    .link_name()
                    .map_err(|e| bad(layer, e.to_string()))?
                    .ok_or_else(|| {
                        bad(layer, format!("{}: symlink without target", raw.display()))
                    })?;
                std::os::unix::fs::symlink(&link, &target).map_err(io(&target))?;
            } else if kind.is_hard_link() {
                let link = entry
                    .link_name()
                    .map_err(|e| bad(layer, e.to_string()))?
                    .ok_or_else(|| {
                        bad(
                            layer,
                            format!("{}: hard link without target", raw.display()),
                        )
                    })?;
                let src = resolve_in_root(root, &clean(layer, &link)?, false).map_err(io(&rel))?;
                let m = std::fs::symlink_metadata(&src).map_err(|_| {
                    bad(
                        layer,
                        format!(
                            "{}: hard link to {}, which is not in the image",
                            raw.display(),
                            link.display()
                        ),
                    )
                })?;
                if !m.is_file() || !src.starts_with(root) {
                    return Err(bad(
                        layer,
                        format!("{}: hard link to a non-file", raw.display()),
                    ));
                }
                std::fs::hard_link(&src, &target).map_err(io(&target))?;
                ours.insert(rel);
                continue;
            } else {
                // Devices, FIFOs, and what this unpacker does not know: skipped.
                continue;
            }
        }
        if let (Some(u), Some(g)) = (uid, gid)
            && super::super::running_as_root()
        {
            std::os::unix::fs::lchown(&target, Some(u), Some(g)).map_err(io(&target))?;
            if !kind.is_symlink() && mode & 0o1000 != 0 {
                set_perm(&target, mode)?; // chown may clear bits; restore sticky
            }
        }
        ours.insert(rel);
    }
    Ok(written)
}

/// Creates what the runtime mounts over, where the image lacks it (directories `/proc`,
/// `/sys`, `/dev`, `/tmp`, `/run`, `/etc`; files `/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf`): a container in a user namespace may not create them in the image's
/// root-owned directories. What the image has (even a symlink) is left alone.
pub fn mount_points(root: &Path) {
    for d in ["proc", "sys", "dev", "tmp", "run", "etc"] {
        let p = root.join(d);
        if std::fs::symlink_metadata(&p).is_err() {
            let _ = std::fs::create_dir(&p);
            let mode = if d == "tmp" { 0o1777 } else { 0o755 };
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
        }
    }
    if std::fs::symlink_metadata(root.join("etc")).is_ok_and(|m| m.is_dir()) {
        for f in ["hosts", "hostname", "resolv.conf"] {
            let p = root.join("etc").join(f);
            if std::fs::symlink_metadata(&p).is_err() {
                let _ = std::fs::File::create_new(&p);
            }
        }
    }
}

fn set_perm(path: &Path, mode: u32) -> Result<(), ContainerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Removes a file, link or directory tree, without following links.
fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// The bytes of regular files under `root` (for images unpacked elsewhere).
#[cfg(test)]
pub fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    /// A tar with raw names (the tar crate's builder refuses `..`, which we must test).
    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, data, kind, link): (&str, &[u8], _, Option<&str>) = match e {
                E::File(n, d) => (n, d, tar::EntryType::Regular, None),
                E::Dir(n) => (n, b"", tar::EntryType::Directory, None),
                E::Link(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
                E::Hard(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(t) = link {
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(root: &Path, entries: &[E<'_>]) -> Result<u64, ContainerError> {
        let mut budget = 1 << 20;
        unpack_layer(
            "test",
            std::io::Cursor::new(tar(entries)),
            root,
            &mut budget,
            &AtomicBool::new(false),
        )
    }

    #[test]
    fn unpacks_files_links_and_whiteouts() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        unpack(
            &root,
            &[
                E::Dir("./bin"),
                E::File("./bin/busybox", b"ELF"),
                E::Link("bin/sh", "busybox"),
                E::Hard("bin/ash", "bin/busybox"),
                E::Dir("etc"),
                E::File("etc/a", b"a"),
                E::File("etc/b", b"b"),
                E::Dir("opaque"),
                E::File("opaque/old", b"o"),
            ],
        )
        .unwrap();
        let m = std::fs::metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "setuid dropped");
        assert_eq!(std::fs::read(root.join("bin/sh")).unwrap(), b"ELF");
        assert_eq!(std::fs::metadata(root.join("bin/ash")).unwrap().nlink(), 2);
        // The next layer deletes etc/a and hides opaque/'s old content.
        unpack(
            &root,
            &[
                E::File("etc/.wh.a", b""),
                E::File("opaque/new", b"n"),
                E::File("opaque/.wh..wh..opq", b""),
            ],
        )
        .unwrap();
        assert!(!root.join("etc/a").exists());
        assert!(root.join("etc/b").exists());
        assert!(!root.join("opaque/old").exists());
        assert!(
            root.join("opaque/new").exists(),
            "this layer's own entries stay"
        );
        // busybox and its hard link each count; etc/b; opaque/new.
        assert_eq!(tree_bytes(&root), 3 + 3 + 1 + 1);
    }

    #[test]
    fn nothing_escapes_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack(&root, &[E::File("../evil", b"x")]).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let err = unpack(&root, &[E::File("/abs", b"x")]).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert!(!outer.path().join("evil").exists());
        // Through a symlink, absolute or relative: followed inside the root.
        unpack(
            &root,
            &[
                E::Link("up", ".."),
                E::Link("abs", outer.path().to_str().unwrap()),
                E::Link("dotdot", "../../../../.."),
                E::File("up/escaped", b"x"),
                E::File("abs/escaped2", b"x"),
                E::File("dotdot/escaped3", b"x"),
            ],
        )
        .unwrap();
        assert!(!outer.path().join("escaped").exists());
        assert!(!outer.path().join("escaped2").exists());
        assert!(
            root.join("escaped").exists(),
            "'..' from the root is the root"
        );
        assert!(
            root.join(outer.path().strip_prefix("/").unwrap())
                .join("escaped2")
                .exists()
        );
        assert!(root.join("escaped3").exists());
        // A hard link to a host file.
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        let err = unpack(&root, &[E::Hard("h", "../secret")]).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let err = unpack(&root, &[E::Hard("h2", "abs/../secret")]).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let host = outer.path().join("secret");
        let host = host.to_str().unwrap();
        let err = unpack(&root, &[E::Hard("h3", host)]).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert_eq!(
            std::fs::metadata(outer.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
        // A whiteout cannot reach out either.
        std::fs::write(outer.path().join("keep"), b"k").unwrap();
        unpack(&root, &[E::File("up/.wh.keep", b"")]).unwrap();
        assert!(outer.path().join("keep").exists());
    }

    #[test]
    fn the_budget_bounds_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = 4;
        let err = unpack_layer(
            "big",
            std::io::Cursor::new(tar(&[E::File("f", b"12345")])),
            dir.path(),
            &mut budget,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(matches!(err, ContainerError::TooLarge { .. }), "{err}");
        assert!(unpack(dir.path(), &[]).is_ok());
        let err = unpack_layer(
            "garbage",
            std::io::Cursor::new(vec![0x1f, 0x8b, 1, 2, 3]),
            dir.path(),
            &mut budget,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(err.to_string().contains("garbage"), "{err}");
    }
}
