//! Images from OCI image layout directories (`index.json`, `blobs/sha256/...`, as
//! `skopeo copy ... oci:DIR:TAG` or `umoci` write them) under `[container] layouts_dir`.
//! A workload names one as `layout.invalid/NAME:TAG` (or `@sha256:...`): the directory
//! `<layouts_dir>/NAME`, the manifest its index names TAG (`org.opencontainers.image.ref.name`).
//! The `.invalid` top-level domain never resolves, so no registry can be meant. Every blob
//! is checked against its digest as it is copied into the cache, as registry blobs are.

use super::ContainerError;
use super::cache::{BlobWriter, Cache, digest_hex, io, valid_hex};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The registry name that means "an OCI layout directory".
pub const LAYOUT_REGISTRY: &str = "layout.invalid";

/// Index and manifest documents are small; anything bigger is not one.
const MAX_DOC: u64 = 4 << 20;

/// A blob an image needs: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub digest: String,
    pub size: u64,
}

fn bad(dir: &Path, reason: impl std::fmt::Display) -> ContainerError {
    ContainerError::Registry(format!("OCI layout {}: {reason}", dir.display()))
}

/// The layout directory a repository names, inside `root` (the reference's grammar already
/// refuses `..`, empty and absolute components).
pub fn dir_for(root: &Path, repository: &str) -> PathBuf {
    root.join(repository)
}

fn read_doc(dir: &Path, path: &Path) -> Result<Vec<u8>, ContainerError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut buf = Vec::new();
    f.take(MAX_DOC + 1)
        .read_to_end(&mut buf)
        .map_err(io(path))?;
    if buf.len() as u64 > MAX_DOC {
        return Err(bad(dir, format!("{} is too large", path.display())));
    }
    Ok(buf)
}

/// A blob of the layout, whole, checked against its digest.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ContainerError> {
    let hex = digest_hex(digest)?;
    let data = read_doc(dir, &dir.join("blobs/sha256").join(hex))?;
    let actual = super::cache::hex_of(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    if actual != hex {
        return Err(ContainerError::Digest {
            expected: digest.to_owned(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(data)
}

fn desc(v: &Value) -> Option<Desc> {
    Some(Desc {
        digest: v.get("digest")?.as_str()?.to_owned(),
        size: v.get("size")?.as_u64()?,
    })
}

/// The manifest `tag` (or `digest`) names: its hex, and the blobs it needs (config first).
pub fn resolve(
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<(String, Vec<Desc>), ContainerError> {
    let index: Value = serde_json::from_slice(&read_doc(dir, &dir.join("index.json"))?)
        .map_err(|e| bad(dir, format!("index.json: {e}")))?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(dir, "index.json lists no manifests"))?;
    let wanted = manifests.iter().find(|m| match digest {
        Some(d) => m.get("digest").and_then(Value::as_str) == Some(d),
        None => {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                == tag
        }
    });
    let mut entry = wanted.cloned().ok_or_else(|| {
        bad(
            dir,
            format!("no manifest for {}", digest.or(tag).unwrap_or("?")),
        )
    })?;
    // An index of platforms: the one this host runs.
    for _ in 0..2 {
        let d = desc(&entry).ok_or_else(|| bad(dir, "a manifest entry without digest or size"))?;
        let doc: Value = serde_json::from_slice(&read_blob(dir, &d.digest)?)
            .map_err(|e| bad(dir, format!("{}: {e}", d.digest)))?;
        if let Some(list) = doc.get("manifests").and_then(Value::as_array) {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            entry = list
                .iter()
                .find(|m| {
                    m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
                        && m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
                })
                .cloned()
                .ok_or_else(|| bad(dir, format!("no linux/{arch} image in {}", d.digest)))?;
            continue;
        }
        let config = doc
            .get("config")
            .and_then(desc)
            .ok_or_else(|| bad(dir, format!("{}: no config", d.digest)))?;
        let mut blobs = vec![config];
        for l in doc
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            blobs.push(desc(l).ok_or_else(|| bad(dir, format!("{}: a bad layer", d.digest)))?);
        }
        for b in &blobs {
            digest_hex(&b.digest)?;
        }
        return Ok((digest_hex(&d.digest)?.to_owned(), blobs));
    }
    Err(bad(dir, "indexes nested too deep"))
}

/// Copies one blob of the layout into the cache through `w` (which checks it).
pub fn copy_blob(
    dir: &Path,
    hex: &str,
    cache: &Cache,
    mut w: BlobWriter,
) -> Result<(), ContainerError> {
    if !valid_hex(hex) {
        return Err(bad(dir, format!("bad digest {hex}")));
    }
    let path = dir.join("blobs/sha256").join(hex);
    let mut f = std::fs::File::open(&path).map_err(io(&path))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(&path))?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    w.finish(cache)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::cache::sha256_hex;
    use super::*;

    fn put(dir: &Path, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn a_layout_resolves_by_tag_and_digest_and_checks_blobs() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let config = put(dir, b"{}");
        let layer = put(dir, b"layer");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":2}},"layers":[{{"digest":"{layer}","size":5}}]}}"#
        );
        let m = put(dir, manifest.as_bytes());
        std::fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"digest":"{m}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"1"}}}}]}}"#,
                manifest.len()
            ),
        )
        .unwrap();
        let (hex, blobs) = resolve(dir, Some("1"), None).unwrap();
        assert_eq!(format!("sha256:{hex}"), m);
        assert_eq!(
            blobs[0],
            Desc {
                digest: config,
                size: 2
            }
        );
        assert_eq!(blobs[1].digest, layer);
        assert_eq!(resolve(dir, None, Some(&m)).unwrap().0, hex);
        let err = resolve(dir, Some("2"), None).unwrap_err();
        assert!(err.to_string().contains("no manifest for 2"), "{err}");
        // A blob changed on disk: refused when read, and when copied.
        let cache = Cache::new(&dir.join("cache"), 1 << 20).unwrap();
        let lhex = digest_hex(&layer).unwrap().to_owned();
        std::fs::write(dir.join("blobs/sha256").join(&lhex), b"LAYER").unwrap();
        let w = BlobWriter::new(&cache, &lhex, 5).unwrap();
        let err = copy_blob(dir, &lhex, &cache, w).unwrap_err();
        assert!(matches!(err, ContainerError::Digest { .. }), "{err}");
        assert!(!cache.blob_path(&lhex).exists());
        std::fs::write(dir.join("blobs/sha256").join(&hex), b"{}").unwrap();
        assert!(resolve(dir, Some("1"), None).is_err());
    }
}
