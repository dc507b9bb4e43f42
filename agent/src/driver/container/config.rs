//! `[container]`: the OCI runtime and the image cache of the `container` driver.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[container]` in the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Offer the `container` driver when the runtime is found (a missing runtime is a warning,
    /// not an error).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The OCI runtime program (runc).
    #[serde(default = "default_runtime")]
    pub runtime: PathBuf,
    /// Registries spoken to in plain HTTP (`host:port`, as in image references). Default none:
    /// every registry is HTTPS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// OCI image layout directories: `layout.invalid/NAME:TAG` is `<layouts_dir>/NAME`.
    #[serde(default)]
    pub layouts_dir: Option<PathBuf>,
    /// The image cache's bound (compressed blobs plus unpacked images), in bytes. Least
    /// recently used images not in use are evicted to make room; an image larger than this
    /// is refused.
    #[serde(default = "default_cache_max")]
    pub cache_max_bytes: u64,
    /// The longest one image pull (manifest, blobs, unpacking) may take.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_secs: u64,
    /// Run each container in a user namespace: its ids 0..65536 are host ids from this one
    /// (its root an unprivileged host user). Unset: no user namespace; the container runs as
    /// the agent's `run_as` user. Needs `state_dir` traversable by others (o+x): runc enters
    /// the bundle as the mapped root.
    #[serde(default)]
    pub userns_base: Option<u32>,
    /// The container's root filesystem is read-only (writable: `/tmp`, `/dev/shm`, `/run`).
    /// When false, writes go to the server's own overlay layer, which is dropped when the
    /// run ends.
    #[serde(default = "yes")]
    pub readonly_rootfs: bool,
}

impl Default for ContainerConfig {
    fn default() -> ContainerConfig {
        ContainerConfig {
            enabled: true,
            runtime: default_runtime(),
            insecure_registries: Vec::new(),
            layouts_dir: None,
            cache_max_bytes: default_cache_max(),
            pull_timeout_secs: default_pull_timeout(),
            readonly_rootfs: true,
            userns_base: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_runtime() -> PathBuf {
    PathBuf::from("/usr/sbin/runc")
}
fn default_cache_max() -> u64 {
    10 * 1024 * 1024 * 1024
}
fn default_pull_timeout() -> u64 {
    600
}

impl ContainerConfig {
    /// Checks the section; answers `(key, reason)` for the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.runtime.is_absolute() {
            return Err(("container.runtime", "must be an absolute path".into()));
        }
        if self.layouts_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(("container.layouts_dir", "must be an absolute path".into()));
        }
        if let Some(b) = self.userns_base
            && (b < 65536 || b.checked_add(super::spec::USERNS_SIZE).is_none())
        {
            return Err((
                "container.userns_base",
                "must be at least 65536 (above real users) and leave room for 65536 ids".into(),
            ));
        }
        if !(1..=3600).contains(&self.pull_timeout_secs) {
            return Err(("container.pull_timeout_secs", "must be 1 to 3600".into()));
        }
        if self.cache_max_bytes < 1024 * 1024 {
            return Err((
                "container.cache_max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        for r in &self.insecure_registries {
            let ok = !r.is_empty()
                && r.len() <= 255
                && r.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            if !ok {
                return Err((
                    "container.insecure_registries",
                    format!("{r:?} is not a registry host[:port]"),
                ));
            }
        }
        Ok(())
    }

    /// The state directory must be usable in overlayfs mount options (no ',' or ':').
    pub fn check_state_dir(state_dir: &Path) -> Result<(), String> {
        let s = state_dir.to_string_lossy();
        if s.contains([',', ':', '\\']) {
            return Err(format!(
                "{s}: the container driver needs a state_dir without ',', ':' or '\\' (overlayfs mount options)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c: ContainerConfig = toml::from_str("").unwrap();
        assert_eq!(c, ContainerConfig::default());
        assert_eq!(c.validate(), Ok(()));
        let c: ContainerConfig =
            toml::from_str("insecure_registries = [\"127.0.0.1:5000\"]\npull_timeout_secs = 5")
                .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<ContainerConfig>("runtim = \"/x\"").is_err());
        for bad in [
            "runtime = \"runc\"",
            "pull_timeout_secs = 0",
            "cache_max_bytes = 10",
            "insecure_registries = [\"http://x\"]",
            "userns_base = 1000",
            "layouts_dir = \"oci\"",
        ] {
            let c: ContainerConfig = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(ContainerConfig::check_state_dir(Path::new("/var/lib/a,b")).is_err());
        assert!(ContainerConfig::check_state_dir(Path::new("/var/lib/backfill")).is_ok());
    }
}
