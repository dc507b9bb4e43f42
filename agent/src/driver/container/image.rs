//! Pulling images from a registry into the cache, on a small runtime of the driver's own.
//!
//! `Driver::launch` is synchronous and runs under the supervisor's lock, which the agent's
//! watchdog loop needs every second; a pull can take minutes. So pulls run on a dedicated
//! thread with its own current-thread tokio runtime (never `block_on` inside the agent's
//! runtime), bounded by `pull_timeout_secs`; a launch waits for its pull at most
//! [`LAUNCH_WAIT`]. A pull still going then fails that start with a clear error
//! ([`ContainerError::StillPulling`]) and goes on in the background: the next start of the
//! server finds the image cached. A failed pull removes the blobs it added and its scratch
//! files; nothing half-written is ever in the cache.

use super::ContainerError;
use super::cache::{BlobWriter, Cache, ImageRecord, digest_hex};
use super::spec::ImageConfig;
use super::{layout, unpack};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The longest a launch waits for its image (below the agent's 30 s systemd watchdog).
pub const LAUNCH_WAIT: Duration = Duration::from_secs(15);

/// A reference split the way the registry protocol needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses `registry[:port]/name[:tag][@sha256:...]` (Docker Hub's `docker.io/library/` when no
/// registry is named).
pub fn parse_reference(reference: &str) -> Result<ImageRef, ContainerError> {
    backfill_shared::workload::check_reference(reference).map_err(|reason| {
        ContainerError::Reference {
            reference: reference.to_owned(),
            reason,
        }
    })?;
    let r = Reference::try_from(reference).map_err(|e| ContainerError::Reference {
        reference: reference.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(ImageRef {
        registry: r.resolve_registry().to_owned(),
        repository: r.repository().to_owned(),
        tag: r.tag().map(str::to_owned),
        digest: r.digest().map(str::to_owned),
    })
}

/// How pulls reach images.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries spoken to in plain HTTP.
    pub insecure: Vec<String>,
    /// Where `layout.invalid/NAME` images live.
    pub layouts_dir: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
struct Slot {
    result: Mutex<Option<Result<ImageRecord, String>>>,
    done: Condvar,
}

/// The pull runtime and the pulls in flight (one per reference).
#[derive(Debug)]
pub struct Puller {
    handle: tokio::runtime::Handle,
    /// Dropped with the driver: the pull thread's runtime ends.
    _stop: tokio::sync::oneshot::Sender<()>,
    inflight: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
    cache: Arc<Cache>,
    opts: PullOptions,
}

impl Puller {
    pub fn new(cache: Arc<Cache>, opts: PullOptions) -> Result<Puller, ContainerError> {
        // reqwest is built without a crypto provider of its own: ring, the process default.
        backfill_shared::tls::install_default_provider();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (htx, hrx) = std::sync::mpsc::channel();
        let spawn_err = |e: std::io::Error| ContainerError::Io {
            path: "image pull thread".into(),
            source: e,
        };
        std::thread::Builder::new()
            .name("image-pull".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = htx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                        rt.shutdown_timeout(Duration::from_secs(1));
                    }
                    Err(e) => {
                        let _ = htx.send(Err(e));
                    }
                }
            })
            .map_err(spawn_err)?;
        let handle = hrx
            .recv()
            .map_err(|e| spawn_err(std::io::Error::other(e)))?
            .map_err(spawn_err)?;
        Ok(Puller {
            handle,
            _stop: stop,
            inflight: Arc::default(),
            cache,
            opts,
        })
    }

    /// The image `reference` names, from the cache or pulled now, waiting at most `wait`.
    pub fn get(
        &self,
        reference: &str,
        wait: Duration,
        in_use: BTreeSet<String>,
    ) -> Result<ImageRecord, ContainerError> {
        if let Some(r) = self.cache.find(reference) {
            self.cache.touch(&r.manifest);
            return Ok(r);
        }
        let slot = {
            let mut inflight = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match inflight.get(reference) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Slot::default());
                    inflight.insert(reference.to_owned(), s.clone());
                    self.spawn(reference, s.clone(), in_use);
                    s
                }
            }
        };
        let guard = slot
            .result
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = slot
            .done
            .wait_timeout_while(guard, wait, |r| r.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(e)) => Err(ContainerError::Registry(e.clone())),
            None => Err(ContainerError::StillPulling {
                reference: reference.to_owned(),
                waited: wait.as_secs(),
            }),
        }
    }

    fn spawn(&self, reference: &str, slot: Arc<Slot>, in_use: BTreeSet<String>) {
        let cache = self.cache.clone();
        let opts = self.opts.clone();
        let timeout = opts.timeout;
        let inflight = self.inflight.clone();
        let reference = reference.to_owned();
        self.handle.spawn(async move {
            let cancel = Arc::new(AtomicBool::new(false));
            let started = std::time::Instant::now();
            let r = tokio::time::timeout(
                timeout,
                pull(&cache, &opts, &reference, &in_use, cancel.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(ContainerError::Timeout {
                    secs: timeout.as_secs(),
                })
            });
            match &r {
                Ok(rec) => {
                    tracing::info!(image = %reference, manifest = %rec.manifest, ms = started.elapsed().as_millis() as u64, "image pulled")
                }
                Err(e) => tracing::warn!(image = %reference, error = %e, "image pull failed"),
            }
            inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&reference);
            *slot
                .result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r.map_err(|e| e.to_string()));
            slot.done.notify_all();
        });
    }
}

/// Removes the blobs a pull added unless it succeeded.
struct Fresh<'a> {
    cache: &'a Cache,
    blobs: Vec<String>,
    manifest: Option<String>,
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        if let Some(m) = &self.manifest {
            self.cache.unpin(m);
        }
        if self.blobs.is_empty() {
            return;
        }
        // Another pull in flight may have found one of these blobs in place and be about to
        // unpack it: then they stay, and the next sweep (at the driver's start) takes them.
        if self.cache.any_pinned() {
            tracing::info!(
                blobs = self.blobs.len(),
                "a failed pull's blobs stay while another pull runs"
            );
            return;
        }
        for b in &self.blobs {
            let _ = std::fs::remove_file(self.cache.blob_path(b));
        }
    }
}

fn registry_err(reference: &str, e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Registry(format!("cannot pull {reference}: {e}"))
}

/// Where an image's blobs come from.
enum Source {
    Registry(Box<Client>, Reference),
    Layout(std::path::PathBuf),
}

async fn pull(
    cache: &Arc<Cache>,
    opts: &PullOptions,
    reference: &str,
    in_use: &BTreeSet<String>,
    cancel: Arc<AtomicBool>,
) -> Result<ImageRecord, ContainerError> {
    let parsed = parse_reference(reference)?;
    let (source, hex, descriptors) = if parsed.registry == layout::LAYOUT_REGISTRY {
        let root = opts.layouts_dir.as_ref().ok_or_else(|| {
            registry_err(
                reference,
                "this agent has no [container] layouts_dir for layout.invalid/ images",
            )
        })?;
        let dir = layout::dir_for(root, &parsed.repository);
        let (hex, blobs) = layout::resolve(&dir, parsed.tag.as_deref(), parsed.digest.as_deref())
            .map_err(|e| registry_err(reference, e))?;
        (Source::Layout(dir), hex, blobs)
    } else {
        let r = Reference::try_from(reference).map_err(|e| registry_err(reference, e))?;
        // try_from, not new: `new` falls back to a default client (HTTPS only) on error.
        let client = Client::try_from(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure.clone()),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        })
        .map_err(|e| registry_err(reference, e))?;
        let (manifest, digest) = client
            .pull_image_manifest(&r, &RegistryAuth::Anonymous)
            .await
            .map_err(|e| registry_err(reference, e))?;
        let mut blobs = Vec::new();
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let size = u64::try_from(d.size).map_err(|_| {
                registry_err(reference, format!("blob {} has a negative size", d.digest))
            })?;
            blobs.push(layout::Desc {
                digest: d.digest.clone(),
                size,
            });
        }
        let hex = digest_hex(&digest)?.to_owned();
        (Source::Registry(Box::new(client), r), hex, blobs)
    };
    if cache.record(&hex).is_some() {
        cache.add_reference(&hex, reference)?;
        cache.touch(&hex);
        return cache
            .record(&hex)
            .ok_or_else(|| registry_err(reference, "the cached image went away"));
    }
    cache.pin(&hex);
    let mut fresh = Fresh {
        cache,
        blobs: Vec::new(),
        manifest: Some(hex.clone()),
    };
    let need = descriptors
        .iter()
        .fold(0u64, |n, d| n.saturating_add(d.size));
    // Unpacked layers take about three times their compressed size: room for that if it can
    // be made, else for the blobs at least.
    let layers = need.saturating_sub(descriptors.first().map_or(0, |d| d.size));
    if cache
        .make_room(need.saturating_add(layers.saturating_mul(3)), in_use)
        .is_err()
    {
        cache.make_room(need, in_use)?;
    }
    let mut blobs = Vec::new();
    for d in &descriptors {
        let h = digest_hex(&d.digest)?.to_owned();
        blobs.push(h.clone());
        if cache.blob_path(&h).exists() {
            continue;
        }
        let mut w = BlobWriter::new(cache, &h, d.size)?;
        match &source {
            Source::Layout(dir) => layout::copy_blob(dir, &h, cache, w)?,
            Source::Registry(client, r) => {
                let desc = oci_client::manifest::OciDescriptor {
                    digest: d.digest.clone(),
                    size: i64::try_from(d.size).unwrap_or(i64::MAX),
                    ..Default::default()
                };
                let mut stream = client
                    .pull_blob_stream(r, &desc)
                    .await
                    .map_err(|e| registry_err(reference, e))?;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => w.write(&chunk)?,
                        // oci-client checks digests too, at the end: say it as we do.
                        Err(e) => {
                            w.verify()?;
                            return Err(registry_err(reference, e));
                        }
                    }
                }
                w.finish(cache)?;
            }
        }
        fresh.blobs.push(h);
    }
    let Some((config_hex, layer_hexes)) = blobs.split_first() else {
        return Err(registry_err(reference, "the manifest names no config"));
    };
    let config_path = cache.blob_path(config_hex);
    let config_blob = std::fs::read(&config_path).map_err(super::cache::io(&config_path))?;
    let config = ImageConfig::parse(&config_blob).map_err(ContainerError::Config)?;
    let layer_hexes: Vec<String> = layer_hexes.to_vec();
    let c2 = cache.clone();
    let unpacked = tokio::task::spawn_blocking(move || unpack_image(&c2, &layer_hexes, &cancel))
        .await
        .map_err(|e| registry_err(reference, e))??;
    let record = ImageRecord {
        references: vec![reference.to_owned()],
        manifest: hex.clone(),
        config,
        blobs,
        unpacked_bytes: unpacked.1,
    };
    if let Err(e) = cache.commit_image(&unpacked.0, &record) {
        let _ = std::fs::remove_dir_all(&unpacked.0);
        return Err(e);
    }
    fresh.blobs.clear();
    Ok(record)
}

/// Unpacks the layers, in order, into a scratch directory: answers it and its bytes.
fn unpack_image(
    cache: &Cache,
    layers: &[String],
    cancel: &AtomicBool,
) -> Result<(std::path::PathBuf, u64), ContainerError> {
    let tmp = cache.tmp_path("rootfs");
    std::fs::create_dir_all(&tmp).map_err(super::cache::io(&tmp))?;
    let start_budget = cache.max().saturating_sub(cache.used_bytes());
    let mut budget = start_budget;
    let mut total = 0u64;
    for h in layers {
        let r = unpack_one(cache, h, &tmp, &mut budget, cancel);
        match r {
            Ok(n) => total = total.saturating_add(n),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(match e {
                    ContainerError::TooLarge { .. } => ContainerError::CacheFull {
                        used: cache.used_bytes(),
                        need: start_budget.saturating_add(1),
                        max: cache.max(),
                    },
                    e => e,
                });
            }
        }
    }
    unpack::mount_points(&tmp);
    Ok((tmp, total))
}

fn unpack_one(
    cache: &Cache,
    hex: &str,
    root: &Path,
    budget: &mut u64,
    cancel: &AtomicBool,
) -> Result<u64, ContainerError> {
    let path = cache.blob_path(hex);
    let f = std::fs::File::open(&path).map_err(super::cache::io(&path))?;
    unpack::unpack_layer(
        &format!("sha256:{hex}"),
        std::io::BufReader::new(f),
        root,
        budget,
        cancel,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_pull_goes_on_in_the_background_until_its_timeout() {
        // A registry that accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path(), 1 << 20).unwrap());
        let puller = Puller::new(
            cache,
            PullOptions {
                insecure: vec![addr.clone()],
                layouts_dir: None,
                timeout: Duration::from_secs(2),
            },
        )
        .unwrap();
        let image = format!("{addr}/slow:1");
        let err = puller
            .get(&image, Duration::from_millis(200), BTreeSet::new())
            .unwrap_err();
        assert!(matches!(err, ContainerError::StillPulling { .. }), "{err}");
        assert!(err.to_string().contains("start the server again"), "{err}");
        // The same pull, still in flight, ends at its timeout.
        let err = puller
            .get(&image, Duration::from_secs(10), BTreeSet::new())
            .unwrap_err();
        assert!(err.to_string().contains("pull_timeout_secs"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn references_split_into_registry_repository_tag() {
        let r = parse_reference("127.0.0.1:5000/demo:1").unwrap();
        assert_eq!(
            r,
            ImageRef {
                registry: "127.0.0.1:5000".into(),
                repository: "demo".into(),
                tag: Some("1".into()),
                digest: None,
            }
        );
        let r = parse_reference("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("index.docker.io", "library/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let r = parse_reference(&format!("registry.example.com/a/b@{d}")).unwrap();
        assert_eq!(r.registry, "registry.example.com");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.digest.as_deref(), Some(d));
        let r = parse_reference("localhost:5000/x/y:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "x/y")
        );
        for bad in ["", "../x", "A/b", "a@sha256:12"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }
}
