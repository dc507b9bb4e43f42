//! A local OCI registry (Debian's docker-registry) and a tiny busybox image to push to it, for
//! the container driver's end-to-end tests.

use crate::wait_until;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const RUNC: &str = "/usr/sbin/runc";
pub const REGISTRY: &str = "/usr/bin/docker-registry";
pub const BUSYBOX: &str = "/bin/busybox";

/// docker-registry on a free loopback port, storing in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry { child, dir, addr };
        wait_until("the registry answers", || {
            std::net::TcpStream::connect(&r.addr).is_ok()
        });
        r
    }

    /// The file the registry serves a blob from.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes whatever containers an agent left (a failed assertion while a container runs and
/// its agent does not stop workloads on exit): runc's record, the process, the mount.
pub struct LeftContainers(pub PathBuf);

impl Drop for LeftContainers {
    fn drop(&mut self) {
        let bundles = self.0.join("containers");
        for e in std::fs::read_dir(&bundles).into_iter().flatten().flatten() {
            let _ = Command::new(RUNC)
                .arg("--root")
                .arg(self.0.join("runc"))
                .args(["delete", "--force"])
                .arg(e.file_name())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("umount")
                .arg("-l")
                .arg(e.path().join("rootfs"))
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    format!(
        "sha256:{}",
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The demo program: says who and where it is, asks the metadata service, and exits when
/// told to stop.
pub const DEMO: &str = r#"#!/bin/sh
echo "demo: uid $(id -u) host $(hostname) image_var $IMAGE_VAR"
trap 'echo "demo: got SIGTERM"; exit 0' TERM
# The agent publishes the guest's document once the start is recorded: ask until it is there.
i=0
while [ $i -lt 100 ]; do
    r=$(printf 'GET /openstack/latest/meta_data.json HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' | nc -w 5 "$MD" 80)
    case "$r" in *'"uuid"'*) break ;; esac
    i=$((i+1)); sleep 0.1
done
echo "$r"
echo "demo: metadata done"
while true; do sleep 1 & wait $!; done
"#;

/// One gzip layer: busybox, its applets as symlinks, the demo script and `extra` files.
pub fn layer(extra: &[(&str, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("bin/busybox", &std::fs::read(BUSYBOX).unwrap(), 0o755);
    add("bin/demo", DEMO.as_bytes(), 0o755);
    for (p, d) in extra {
        add(p, d, 0o644);
    }
    for applet in [
        "sh", "id", "hostname", "nc", "sleep", "echo", "printf", "cat", "touch",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Pushes an image of one layer as `<registry>/<name>`; answers the layer's digest.
pub async fn push(registry: &Registry, name: &str, extra: &[(&str, Vec<u8>)]) -> String {
    let (data, diff_id) = layer(extra);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "IMAGE_VAR=from-image"], "Cmd": ["/bin/demo"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: Reference = format!("{}/{name}", registry.addr).parse().unwrap();
    let layer = ImageLayer::oci_v1_gzip(data, None);
    let digest = layer.sha256_digest();
    client
        .push(
            &reference,
            &[layer],
            Config::oci_v1(serde_json::to_vec(&config).unwrap(), None),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
    digest
}
