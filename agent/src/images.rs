//! The operator's image directory: names resolved without leaving it, formats read with
//! `qemu-img info`, and per-server copy-on-write overlays.

use backfill_shared::VmImage;
use backfill_shared::workload::check_file_name;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an image of the directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image (or its name) is not usable here.
    #[error("{0}")]
    Unusable(String),
}

/// What a file of the image directory is, by name for direct-boot files:
/// `vmlinuz*`, `bzImage*`, `*.kernel` are kernels; `initrd*`, `initramfs*`, `*.initrd`,
/// `*.cpio`, `*.cpio.gz` are initrds; anything else is a disk image whose format
/// `qemu-img info` tells.
pub fn boot_file_kind(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    if n.starts_with("vmlinuz") || n.starts_with("bzimage") || n.ends_with(".kernel") {
        Some("kernel")
    } else if n.starts_with("initrd")
        || n.starts_with("initramfs")
        || n.ends_with(".initrd")
        || n.ends_with(".cpio")
        || n.ends_with(".cpio.gz")
    {
        Some("initrd")
    } else {
        None
    }
}

/// The file `name` of `dir`: a plain name, a regular file, and (symbolic links followed)
/// still inside `dir`.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    check_file_name(name).map_err(ImageError::Unusable)?;
    let canon_dir = dir.canonicalize().map_err(|source| ImageError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let path = canon_dir.join(name);
    let real = path.canonicalize().map_err(|_| {
        ImageError::Unusable(format!(
            "{name:?} is not in this host's image directory {}",
            dir.display()
        ))
    })?;
    if !real.starts_with(&canon_dir) || !real.is_file() {
        return Err(ImageError::Unusable(format!(
            "{name:?} is not a file of the image directory {}",
            dir.display()
        )));
    }
    Ok(real)
}

/// `qemu-img info`: (format, virtual size).
pub fn info(qemu_img: &Path, image: &Path) -> Result<(String, u64), ImageError> {
    let out = Command::new(qemu_img)
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .map_err(|source| ImageError::Io {
            path: qemu_img.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Unusable(format!(
            "qemu-img info {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_info(&out.stdout).ok_or_else(|| {
        ImageError::Unusable(format!("qemu-img info {}: unreadable", image.display()))
    })
}

fn parse_info(json: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some((
        v["format"].as_str()?.to_owned(),
        v["virtual-size"].as_u64()?,
    ))
}

/// Every usable file of `dir`, sorted by name. Unreadable images are left out (logged).
pub fn list(dir: &Path, qemu_img: &Path) -> Vec<VmImage> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_file_name(n).is_ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let path = resolve(dir, &name).ok()?;
            let (format, virtual_size) = match boot_file_kind(&name) {
                Some(kind) => (kind.to_owned(), std::fs::metadata(&path).ok()?.len()),
                None => match info(qemu_img, &path) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(image = %name, error = %e, "leaving an unreadable image out of the inventory");
                        return None;
                    }
                },
            };
            Some(VmImage {
                name,
                format,
                virtual_size,
            })
        })
        .collect()
}

/// The server's overlay on `image` at `overlay`, made unless one on the same image is there
/// already (a stopped VM starts again on its own disk). `stamp` records which image it is on.
pub fn ensure_overlay(
    qemu_img: &Path,
    image: &Path,
    image_name: &str,
    overlay: &Path,
) -> Result<(), ImageError> {
    let stamp = overlay.with_extension("image");
    if overlay.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == image_name) {
        return Ok(());
    }
    let (format, _) = info(qemu_img, image)?;
    if format != "qcow2" && format != "raw" {
        return Err(ImageError::Unusable(format!(
            "{image_name:?} is a {format} image; disks are qcow2 or raw"
        )));
    }
    let _ = std::fs::remove_file(overlay);
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"])
        .arg(image)
        .arg(overlay)
        .output()
        .map_err(|source| ImageError::Io {
            path: qemu_img.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Unusable(format!(
            "cannot make the overlay {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::write(&stamp, image_name).map_err(|source| ImageError::Io {
        path: stamp.clone(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_by_name() {
        assert_eq!(
            boot_file_kind("vmlinuz-6.1.0-57-cloud-amd64"),
            Some("kernel")
        );
        assert_eq!(boot_file_kind("guest.kernel"), Some("kernel"));
        assert_eq!(boot_file_kind("initrd.img-6.1"), Some("initrd"));
        assert_eq!(boot_file_kind("tiny.cpio.gz"), Some("initrd"));
        assert_eq!(boot_file_kind("debian-12.qcow2"), None);
    }

    #[test]
    fn names_never_leave_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("vmlinuz"), b"k").unwrap();
        std::fs::write(root.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), images.join("escape")).unwrap();
        std::os::unix::fs::symlink("vmlinuz", images.join("vmlinuz-link")).unwrap();
        std::fs::create_dir(images.join("subdir")).unwrap();
        assert!(resolve(&images, "vmlinuz").is_ok());
        assert!(resolve(&images, "vmlinuz-link").is_ok());
        for bad in ["escape", "../secret", "subdir", "missing", ".hidden", "a/b"] {
            assert!(resolve(&images, bad).is_err(), "{bad}");
        }
        let listed = list(&images, Path::new("/nonexistent/qemu-img"));
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["vmlinuz", "vmlinuz-link"]);
        assert_eq!(listed[0].format, "kernel");
        assert_eq!(listed[0].virtual_size, 1);
    }

    #[test]
    fn qemu_img_info_json() {
        let j = br#"{"virtual-size": 2147483648, "filename": "d.qcow2", "format": "qcow2", "dirty-flag": false}"#;
        assert_eq!(parse_info(j), Some(("qcow2".into(), 2 << 30)));
        assert_eq!(parse_info(b"{}"), None);
    }

    #[test]
    fn overlays_with_real_qemu_img() {
        let qemu_img = Path::new("/usr/bin/qemu-img");
        if !qemu_img.exists() {
            eprintln!("SKIP: no /usr/bin/qemu-img (install qemu-utils)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::File::create(&base)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert_eq!(info(qemu_img, &base).unwrap(), ("raw".into(), 1 << 20));
        let ovl = dir.path().join("disk.qcow2");
        ensure_overlay(qemu_img, &base, "base.raw", &ovl).unwrap();
        assert_eq!(info(qemu_img, &ovl).unwrap(), ("qcow2".into(), 1 << 20));
        let listed = list(dir.path(), qemu_img);
        assert!(
            listed
                .iter()
                .any(|i| i.name == "disk.qcow2" && i.format == "qcow2"),
            "{listed:?}"
        );
    }
}
