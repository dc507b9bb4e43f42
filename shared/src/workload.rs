//! What a server runs, and what a host can run: the workload kinds (`exec`, `vm`, `container`)
//! as the API takes them and the link carries them, and the drivers an agent reports in its
//! inventory. Validation lives here so that the coordinator (answering 4xx) and the agent
//! (refusing what slipped through) judge a workload the same way.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// At most this many command arguments or environment variables.
pub const MAX_ARGS: usize = 256;
/// At most this many bytes in one argument, variable value or kernel command line.
pub const MAX_ARG: usize = 4096;
/// At most this many bytes in an image or file name.
pub const MAX_NAME: usize = 128;
/// At most this many bytes in a container image reference.
pub const MAX_REFERENCE: usize = 512;

/// A workload the API or an agent cannot accept, saying what is wrong in the API's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorkloadError(pub String);

fn bad(msg: impl Into<String>) -> WorkloadError {
    WorkloadError(msg.into())
}

/// Which driver runs a workload.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A process on the host, in its cgroup (development and tests).
    #[default]
    Exec,
    /// A QEMU virtual machine.
    Vm,
    /// An OCI container.
    Container,
}

impl DriverKind {
    pub const ALL: [DriverKind; 3] = [DriverKind::Exec, DriverKind::Vm, DriverKind::Container];

    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Exec => "exec",
            DriverKind::Vm => "vm",
            DriverKind::Container => "container",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a server runs. Exactly one of `command` (the `exec` driver), `vm` or `container`
/// names the driver; a container's `command` and `env` override its image's.
///
/// In JSON: `{"command": [...]}`, `{"vm": {"image": "debian-12.qcow2"}}` or
/// `{"container": {"image": "registry.example/app:1"}, "command": [...]}`, each optionally with
/// `env` and `network`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `None`: the driver's default ([`Workload::network_mode`]).
    #[serde(default)]
    pub network: Option<NetworkMode>,
    #[serde(default)]
    pub vm: Option<VmWorkload>,
    #[serde(default)]
    pub container: Option<ContainerWorkload>,
}

/// A virtual machine: booted from a disk image of the agent's image directory (through a
/// per-server copy-on-write overlay), or a kernel booted directly (with an optional initrd
/// and root disk image). Names are file names in the agent's `[vm] images_dir`, never paths.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmWorkload {
    /// The root disk image.
    #[serde(default)]
    pub image: Option<String>,
    /// Direct kernel boot: the kernel image.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// The kernel command line (direct kernel boot only).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// The server's drives, in boot order. The API does not take them here (a server attaches
    /// drives through its own `drives`); the coordinator fills them in for the agent.
    #[serde(default)]
    pub drives: Vec<crate::drive::DriveAttachment>,
}

/// An OCI container: an image by reference (`registry[:port]/name[:tag]` or `...@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerWorkload {
    pub image: String,
    /// The working directory, overriding the image's.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// Where a workload's network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network namespace (the guest cannot be told apart by address, so it has no
    /// metadata service of its own except through a signing proxy).
    #[default]
    Host,
    /// Its own network namespace with a veth pair, an address from the host's pool and a route
    /// to the metadata service.
    Isolated,
}

/// What a workload needs of a host: its driver and, for a VM, the files of the image
/// directory it boots from. The scheduler places a server only where these are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    pub driver: DriverKind,
    pub files: Vec<String>,
    /// The host that holds its drives: it runs there or nowhere.
    pub host: Option<crate::ids::HostId>,
}

impl Needs {
    /// What `workload` needs (`None`: the host's default command, `exec`). A workload that
    /// names no valid kind needs `exec` here; validation refuses it elsewhere.
    pub fn of(workload: Option<&Workload>) -> Needs {
        let Some(w) = workload else {
            return Needs::default();
        };
        let driver = w.kind().unwrap_or_default();
        let files = match (&w.vm, driver) {
            (Some(vm), DriverKind::Vm) => vm.files().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Needs {
            driver,
            files,
            host: None,
        }
    }
}

impl std::fmt::Display for Needs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.driver)?;
        if !self.files.is_empty() {
            write!(f, " with {}", self.files.join(", "))?;
        }
        if let Some(h) = &self.host {
            write!(f, " on host {h} (where its drives are)")?;
        }
        Ok(())
    }
}

impl Workload {
    /// The driver this workload needs, or why it names none or several.
    pub fn kind(&self) -> Result<DriverKind, WorkloadError> {
        match (&self.vm, &self.container) {
            (Some(_), Some(_)) => Err(bad(
                "workload names two kinds: give one of \"command\", \"vm\" or \"container\"",
            )),
            (Some(_), None) if !self.command.is_empty() => Err(bad(
                "workload.command is for exec and container workloads; a vm boots its image",
            )),
            (Some(_), None) => Ok(DriverKind::Vm),
            (None, Some(_)) => Ok(DriverKind::Container),
            (None, None) if self.command.is_empty() => Err(bad(
                "workload needs one of \"command\": [...], \"vm\": {...} or \"container\": {...}",
            )),
            (None, None) => Ok(DriverKind::Exec),
        }
    }

    /// The network it gets: what it asked for, else isolated for VMs and containers and the
    /// host's for `exec`.
    pub fn network_mode(&self) -> NetworkMode {
        match (self.network, self.kind()) {
            (Some(n), _) => n,
            (None, Ok(DriverKind::Vm | DriverKind::Container)) => NetworkMode::Isolated,
            (None, _) => NetworkMode::Host,
        }
    }

    /// Checks everything that can be checked without a host: one kind, sizes, names that
    /// cannot become paths outside the agent's directories. Answers the kind.
    pub fn validate(&self) -> Result<DriverKind, WorkloadError> {
        let kind = self.kind()?;
        if self.command.len() > MAX_ARGS {
            return Err(bad(format!(
                "workload.command has at most {MAX_ARGS} strings"
            )));
        }
        if self
            .command
            .iter()
            .any(|a| a.len() > MAX_ARG || a.contains('\0'))
        {
            return Err(bad(
                "workload.command strings are at most 4096 bytes, without NUL",
            ));
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(bad("workload.command[0] must name a program"));
        }
        if self.env.len() > MAX_ARGS
            || self.env.iter().any(|(k, v)| {
                k.is_empty()
                    || k.contains('=')
                    || k.contains('\0')
                    || v.contains('\0')
                    || v.len() > MAX_ARG
            })
        {
            return Err(bad(format!(
                "workload.env: at most {MAX_ARGS} variables, names without '=' or NUL, values without NUL"
            )));
        }
        if let Some(vm) = &self.vm {
            vm.validate()?;
            if self.network == Some(NetworkMode::Host) {
                return Err(bad(
                    "a vm always has its own network: workload.network must be \"isolated\" or absent",
                ));
            }
            if !self.env.is_empty() {
                return Err(bad(
                    "workload.env is for exec and container workloads; give a vm its settings through meta or cloud-init user data",
                ));
            }
        }
        if let Some(c) = &self.container {
            c.validate()?;
        }
        Ok(kind)
    }
}

impl VmWorkload {
    pub fn validate(&self) -> Result<(), WorkloadError> {
        for (field, name) in [
            ("image", &self.image),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
        ] {
            if let Some(n) = name {
                check_file_name(n).map_err(|e| bad(format!("workload.vm.{field}: {e}")))?;
            }
        }
        if self.image.is_some() && !self.drives.is_empty() {
            return Err(bad(
                "a vm boots from its drive with boot_order 1 or from workload.vm.image, not both",
            ));
        }
        if self.image.is_none() && self.kernel.is_none() && self.drives.is_empty() {
            return Err(bad(
                "workload.vm needs an \"image\" (a disk image of the fleet) or a \"kernel\" to boot directly",
            ));
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err(bad(
                "workload.vm.initrd and cmdline are for direct kernel boot: give a \"kernel\" too",
            ));
        }
        if let Some(c) = &self.cmdline
            && (c.len() > MAX_ARG || c.contains('\0') || c.contains('\n'))
        {
            return Err(bad(
                "workload.vm.cmdline is at most 4096 bytes on one line, without NUL",
            ));
        }
        Ok(())
    }

    /// The image-directory files this VM needs.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        [&self.image, &self.kernel, &self.initrd]
            .into_iter()
            .filter_map(|n| n.as_deref())
    }
}

impl ContainerWorkload {
    pub fn validate(&self) -> Result<(), WorkloadError> {
        check_reference(&self.image).map_err(|e| bad(format!("workload.container.image: {e}")))?;
        if let Some(w) = &self.workdir
            && (!w.starts_with('/') || w.len() > MAX_ARG || w.contains('\0'))
        {
            return Err(bad(
                "workload.container.workdir must be an absolute path inside the container",
            ));
        }
        Ok(())
    }
}

/// A plain file name: `[A-Za-z0-9._+-]`, not starting with a dot, at most [`MAX_NAME`] bytes.
/// Anything that could name another directory (`/`, `..`) is refused.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{name:?}: names are 1 to {MAX_NAME} bytes"));
    }
    if name.starts_with('.') {
        return Err(format!("{name:?}: names may not start with a dot"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return Err(format!(
            "{name:?}: {c:?} is not allowed; names are file names in the fleet's image directory (letters, digits, '.', '_', '-', '+'), never paths"
        ));
    }
    Ok(())
}

/// A container image reference in the distribution spec's grammar, loosely: lowercase path
/// components separated by `/`, an optional `registry[:port]/` first, then `:tag` and/or
/// `@algorithm:hex`. Components `.` and `..`, absolute paths and empty components are refused.
pub fn check_reference(r: &str) -> Result<(), String> {
    if r.is_empty() || r.len() > MAX_REFERENCE {
        return Err(format!("references are 1 to {MAX_REFERENCE} bytes"));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(format!("{r:?}: a digest is algorithm:hex, e.g. sha256:..."));
        };
        if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{r:?}: only sha256 digests of 64 hex digits"));
        }
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || t.starts_with(['.', '-'])
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        return Err(format!(
            "{r:?}: a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ));
    }
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
        return Err(format!("{r:?}: not an image reference"));
    }
    for (i, part) in name.split('/').enumerate() {
        // As Docker reads it: the first of several components is a registry when it looks
        // like a host name (a dot or a port) or is `localhost`.
        let host =
            i == 0 && name.contains('/') && (part.contains(['.', ':']) || part == "localhost");
        let ok = !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| {
                b.is_ascii_digit()
                    || b.is_ascii_lowercase()
                    || matches!(b, b'.' | b'_' | b'-')
                    || (host && (b == b':' || b.is_ascii_uppercase()))
            });
        if !ok {
            return Err(format!(
                "{r:?}: path components are lowercase letters, digits, '.', '_' and '-' (never '.' or '..' alone)"
            ));
        }
    }
    Ok(())
}

/// The drivers an agent has, as it reports them in its inventory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Drivers {
    /// Processes on the host (enabled by the agent's configuration).
    pub exec: bool,
    /// QEMU was found (and with which accelerator it runs guests).
    pub vm: Option<VmDriver>,
    /// An OCI runtime was found.
    pub container: Option<ContainerDriver>,
}

/// The `vm` driver of one host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmDriver {
    /// `kvm` or `tcg`: what guests run with here.
    pub accel: String,
    /// The images of `[vm] images_dir`.
    pub images: Vec<VmImage>,
}

/// One image an agent offers to VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmImage {
    /// Its file name in the image directory.
    pub name: String,
    /// `qcow2`, `raw`, or `kernel`/`initrd` for direct-boot files.
    pub format: String,
    /// The size the guest sees (bytes); a file's own size for kernels and initrds.
    pub virtual_size: u64,
}

/// The `container` driver of one host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerDriver {
    /// The OCI runtime's name and version, e.g. `runc 1.1.5`.
    pub runtime: String,
}

impl Drivers {
    /// What older agents (and stored inventories that do not say) have: `exec` only.
    pub fn exec_only() -> Drivers {
        Drivers {
            exec: true,
            vm: None,
            container: None,
        }
    }

    pub fn has(&self, kind: DriverKind) -> bool {
        match kind {
            DriverKind::Exec => self.exec,
            DriverKind::Vm => self.vm.is_some(),
            DriverKind::Container => self.container.is_some(),
        }
    }

    /// The kinds this host can run.
    pub fn kinds(&self) -> Vec<DriverKind> {
        DriverKind::ALL
            .into_iter()
            .filter(|k| self.has(*k))
            .collect()
    }

    /// Whether this host can run `workload` (`None`: the host's default command, `exec`):
    /// the driver is here and, for a VM, every file it names is in the image directory.
    pub fn can_run(&self, workload: Option<&Workload>) -> bool {
        self.provides(&Needs::of(workload))
    }

    /// Whether this host's drivers have what `needs` asks for (the host a server's drives
    /// pin it to is the scheduler's to check).
    pub fn provides(&self, needs: &Needs) -> bool {
        match (needs.driver, &self.vm) {
            (DriverKind::Vm, Some(d)) => needs
                .files
                .iter()
                .all(|f| d.images.iter().any(|i| i.name == *f)),
            (kind, _) => self.has(kind),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Workload {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn kinds_from_json() {
        let exec = parse(r#"{"command":["sleep","1"]}"#);
        assert_eq!(exec.validate(), Ok(DriverKind::Exec));
        assert_eq!(exec.network_mode(), NetworkMode::Host);
        let vm = parse(r#"{"vm":{"image":"debian-12.qcow2"}}"#);
        assert_eq!(vm.validate(), Ok(DriverKind::Vm));
        assert_eq!(vm.network_mode(), NetworkMode::Isolated);
        let c = parse(r#"{"container":{"image":"127.0.0.1:5000/demo:1"},"command":["sh"]}"#);
        assert_eq!(c.validate(), Ok(DriverKind::Container));
        assert_eq!(c.network_mode(), NetworkMode::Isolated);
        // What earlier versions stored still reads.
        let old = parse(r#"{"command":["x"],"env":{},"network":"isolated"}"#);
        assert_eq!(old.network_mode(), NetworkMode::Isolated);
    }

    #[test]
    fn bad_workloads_say_why() {
        for (json, needle) in [
            (r#"{}"#, "needs one of"),
            (
                r#"{"vm":{"image":"a"},"container":{"image":"b"}}"#,
                "two kinds",
            ),
            (r#"{"vm":{"image":"../etc/passwd"}}"#, "dot"),
            (r#"{"vm":{"image":"a/../../etc/passwd"}}"#, "never paths"),
            (r#"{"vm":{"image":"/etc/passwd"}}"#, "never paths"),
            (r#"{"vm":{"image":".hidden"}}"#, "dot"),
            (r#"{"vm":{}}"#, "needs an"),
            (r#"{"vm":{"image":"a"},"network":"host"}"#, "own network"),
            (r#"{"vm":{"image":"a","cmdline":"x"}}"#, "direct kernel"),
            (r#"{"container":{"image":"../x"}}"#, "path components"),
            (r#"{"container":{"image":"/abs/x"}}"#, "not an image"),
            (r#"{"container":{"image":"a/../b"}}"#, "path components"),
            (r#"{"container":{"image":"a@sha256:12"}}"#, "64 hex"),
            (r#"{"container":{"image":"a:"}}"#, "a tag"),
            (r#"{"container":{"image":"a","workdir":"rel"}}"#, "absolute"),
            (r#"{"command":[""]}"#, "name a program"),
        ] {
            let err = parse(json).validate().unwrap_err();
            assert!(err.0.contains(needle), "{json}: {err}");
        }
        assert!(serde_json::from_str::<Workload>(r#"{"kind":"x"}"#).is_err());
    }

    #[test]
    fn references() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "127.0.0.1:5000/demo/app:v1",
            "registry.example.com/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost:5000/x:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A/b", "a//b", "a/", "a/./b", "..", "a b"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placement_needs_the_driver_and_the_images() {
        let mut d = Drivers::exec_only();
        let vm = parse(r#"{"vm":{"kernel":"vmlinuz","initrd":"initrd.img"}}"#);
        assert!(d.can_run(None));
        assert!(!d.can_run(Some(&vm)));
        d.vm = Some(VmDriver {
            accel: "tcg".into(),
            images: vec![VmImage {
                name: "vmlinuz".into(),
                format: "kernel".into(),
                virtual_size: 1,
            }],
        });
        assert!(!d.can_run(Some(&vm)), "the initrd is missing");
        if let Some(v) = d.vm.as_mut() {
            v.images.push(VmImage {
                name: "initrd.img".into(),
                format: "initrd".into(),
                virtual_size: 1,
            });
        }
        assert!(d.can_run(Some(&vm)));
        assert_eq!(d.kinds(), vec![DriverKind::Exec, DriverKind::Vm]);
    }
}
