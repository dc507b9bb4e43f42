//! QEMU's command line for one VM, as a pure function of what the VM is.

use crate::driver::RunAs;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The tap device QEMU attaches to, inside the server's network namespace.
pub const TAP: &str = "tap0";
/// The bridge that joins the tap and the namespace's end of the veth pair.
pub const BRIDGE: &str = "br0";
/// TCG's translation cache (MiB): QEMU's default of 1 GiB would count against the cgroup.
pub const TCG_TB_MIB: u64 = 64;
/// The guest's DMI system information: an OpenStack Nova instance, as the metadata service
/// answers in OpenStack's format (among others).
pub const SMBIOS: &str = "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova";

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuPlan {
    pub qemu: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    pub name: String,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// The per-server qcow2 overlay.
    pub disk: Option<PathBuf>,
    /// The server's drives in boot order (the first boots), each a qcow2 file.
    pub drives: Vec<(
        PathBuf,
        backfill_shared::Media,
        backfill_shared::drive::DriveDevice,
    )>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub mac: [u8; 6],
    pub qmp: PathBuf,
    pub console: PathBuf,
    /// PCI bus ids of the GPUs passed through.
    pub gpus: Vec<String>,
    pub run_as: Option<RunAs>,
}

/// A path inside a QEMU option (`key=value,...`): commas are doubled.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The guest's MAC: locally administered, from the server's uuid (stable across runs).
pub fn mac_for(server: &backfill_shared::ServerId) -> [u8; 6] {
    let b = server.to_string().replace('-', "");
    let byte =
        |i: usize| u8::from_str_radix(b.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    [0x52, 0x54, 0x00, byte(13), byte(14), byte(15)]
}

/// A PCI address as `vfio-pci` takes it (`dddd:bb:ss.f`, lowercase), or `None` when `id` is
/// not one (NVML writes an 8-digit domain).
pub fn vfio_host(id: &str) -> Option<String> {
    let (domain, rest) = match id.matches(':').count() {
        2 => id.split_once(':')?,
        1 => ("0", id),
        _ => return None,
    };
    let (bus, rest) = rest.split_once(':')?;
    let (slot, func) = rest.split_once('.')?;
    let hex = |s: &str, max: u32| {
        (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain, 0xffff)?,
        hex(bus, 0xff)?,
        hex(slot, 0x1f)?,
        hex(func, 7)?
    ))
}

impl QemuPlan {
    /// The argument vector, program first.
    pub fn argv(&self) -> Result<Vec<OsString>, String> {
        let mut a: Vec<String> = vec![
            self.qemu.to_string_lossy().into_owned(),
            "-name".into(),
            format!("guest={},debug-threads=on", self.name.replace(',', ",,")),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-machine".into(),
            "q35".into(),
            // What Nova puts there: cloud-init (ds-identify and its OpenStack datasource)
            // looks for the OpenStack metadata service only when the DMI product name says so.
            "-smbios".into(),
            SMBIOS.into(),
        ];
        match self.accel {
            "kvm" => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            _ => a.extend([
                "-accel".into(),
                format!("tcg,tb-size={TCG_TB_MIB}"),
                "-cpu".into(),
                "max".into(),
            ]),
        }
        let mib = self.mem_bytes.div_ceil(1 << 20).max(16);
        a.extend([
            "-smp".into(),
            self.vcpus.max(1).to_string(),
            "-m".into(),
            format!("{mib}M"),
            "-chardev".into(),
            format!("file,id=console,path={},append=on", opt_path(&self.console)),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!(
                "socket,id=qmp,path={},server=on,wait=off",
                opt_path(&self.qmp)
            ),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-netdev".into(),
            format!("tap,id=net0,ifname={TAP},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={}", mac_string(&self.mac)),
            "-device".into(),
            "virtio-balloon-pci,id=balloon0".into(),
        ]);
        if let Some(d) = &self.disk {
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=disk0,format=qcow2", opt_path(d)),
                "-device".into(),
                "virtio-blk-pci,drive=disk0,bootindex=1".into(),
            ]);
        }
        for (i, (path, media, device)) in self.drives.iter().enumerate() {
            use backfill_shared::Media;
            use backfill_shared::drive::DriveDevice;
            let boot = i + 1;
            let (cd, dev) = match (media, device) {
                (Media::Cdrom, _) => (",media=cdrom,readonly=on", "ide-cd"),
                (Media::Disk, DriveDevice::Ide) => ("", "ide-hd"),
                (Media::Disk, DriveDevice::Virtio) => ("", "virtio-blk-pci"),
            };
            a.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=drive{i},format=qcow2{cd}",
                    opt_path(path)
                ),
                "-device".into(),
                format!("{dev},drive=drive{i},bootindex={boot}"),
            ]);
        }
        if let Some(k) = &self.kernel {
            a.extend(["-kernel".into(), k.to_string_lossy().into_owned()]);
            if let Some(i) = &self.initrd {
                a.extend(["-initrd".into(), i.to_string_lossy().into_owned()]);
            }
            let mut cmdline = self.cmdline.clone().unwrap_or_default();
            if !cmdline
                .split_whitespace()
                .any(|w| w.starts_with("console="))
            {
                cmdline = format!("{cmdline} console=ttyS0").trim().to_owned();
            }
            a.extend(["-append".into(), cmdline]);
        } else if self.initrd.is_some() || self.cmdline.is_some() {
            return Err("an initrd or a kernel command line needs a kernel".into());
        }
        for g in &self.gpus {
            let host = vfio_host(g).ok_or_else(|| format!("{g:?} is not a PCI address"))?;
            a.extend(["-device".into(), format!("vfio-pci,host={host}")]);
        }
        if let Some(u) = self.run_as {
            // QEMU opens its files, devices and sockets as root, then becomes this user
            // before the guest runs.
            a.extend(["-runas".into(), format!("{}:{}", u.uid, u.gid)]);
        }
        Ok(a.into_iter().map(OsString::from).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan() -> QemuPlan {
        QemuPlan {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: "tcg",
            name: "6b1c".into(),
            vcpus: 2,
            mem_bytes: 256 << 20,
            disk: Some("/var/lib/a,b/disk.qcow2".into()),
            drives: Vec::new(),
            kernel: None,
            initrd: None,
            cmdline: None,
            mac: [0x52, 0x54, 0, 1, 2, 0xab],
            qmp: "/s/qmp.sock".into(),
            console: "/s/logs/x.log".into(),
            gpus: vec![],
            run_as: Some(RunAs {
                uid: 65534,
                gid: 65534,
            }),
        }
    }

    fn text(p: &QemuPlan) -> String {
        p.argv()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_disk_vm() {
        let t = text(&plan());
        for part in [
            "-accel tcg,tb-size=64 -cpu max",
            "-smp 2 -m 256M",
            "file=/var/lib/a,,b/disk.qcow2,if=none,id=disk0,format=qcow2",
            "mac=52:54:00:01:02:ab",
            "socket,id=qmp,path=/s/qmp.sock,server=on,wait=off",
            "-serial chardev:console",
            "virtio-balloon-pci",
            "-runas 65534:65534",
            "ifname=tap0",
            "-smbios type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova",
        ] {
            assert!(t.contains(part), "{part} in {t}");
        }
        assert!(!t.contains("-kernel"));
        let kvm = QemuPlan {
            accel: "kvm",
            run_as: None,
            ..plan()
        };
        let t = text(&kvm);
        assert!(t.contains("-accel kvm -cpu host"), "{t}");
        assert!(!t.contains("-runas"));
    }

    #[test]
    fn direct_kernel_boot_gets_a_serial_console() {
        let p = QemuPlan {
            disk: None,
            drives: Vec::new(),
            kernel: Some("/img/vmlinuz".into()),
            initrd: Some("/img/initrd.img".into()),
            cmdline: Some("quiet".into()),
            ..plan()
        };
        let argv = p.argv().unwrap();
        let i = argv.iter().position(|a| a == "-append").unwrap();
        assert_eq!(argv[i + 1], "quiet console=ttyS0");
        assert!(text(&p).contains("-kernel /img/vmlinuz -initrd /img/initrd.img"));
        let own = QemuPlan {
            cmdline: Some("console=hvc0 rw".into()),
            ..p.clone()
        };
        let argv = own.argv().unwrap();
        assert!(argv.iter().any(|a| a == "console=hvc0 rw"));
        let orphan = QemuPlan { kernel: None, ..p };
        assert!(orphan.argv().is_err());
    }

    #[test]
    fn drives_attach_in_boot_order_and_a_cdrom_as_a_cd() {
        use backfill_shared::Media;
        use backfill_shared::drive::DriveDevice;
        let p = QemuPlan {
            disk: None,
            drives: vec![
                (
                    "/s/drives/a,b.qcow2".into(),
                    Media::Disk,
                    DriveDevice::Virtio,
                ),
                (
                    "/s/drives/c.qcow2".into(),
                    Media::Cdrom,
                    DriveDevice::Virtio,
                ),
                ("/s/drives/d.qcow2".into(), Media::Disk, DriveDevice::Ide),
            ],
            ..plan()
        };
        let t = text(&p);
        for part in [
            "-drive file=/s/drives/a,,b.qcow2,if=none,id=drive0,format=qcow2 -device virtio-blk-pci,drive=drive0,bootindex=1",
            "-drive file=/s/drives/c.qcow2,if=none,id=drive1,format=qcow2,media=cdrom,readonly=on -device ide-cd,drive=drive1,bootindex=2",
            "-device ide-hd,drive=drive2,bootindex=3",
        ] {
            assert!(t.contains(part), "{part} in {t}");
        }
    }

    #[test]
    fn gpus_are_passed_through_by_bus_id() {
        let p = QemuPlan {
            gpus: vec!["00000000:3B:00.0".into(), "0000:af:00.1".into()],
            ..plan()
        };
        let t = text(&p);
        assert!(t.contains("-device vfio-pci,host=0000:3b:00.0"), "{t}");
        assert!(t.contains("-device vfio-pci,host=0000:af:00.1"), "{t}");
        let bad = QemuPlan {
            gpus: vec!["3b:00.0,x-evil=1".into()],
            ..plan()
        };
        assert!(bad.argv().is_err());
        assert_eq!(vfio_host("3b:00.0").as_deref(), Some("0000:3b:00.0"));
        assert_eq!(vfio_host("1:2:3:4"), None);
        assert_eq!(vfio_host("0000:100:00.0"), None);
    }

    #[test]
    fn macs_are_stable_and_local() {
        let id = backfill_shared::ServerId::from_u128(0x1234_5678_9abc);
        assert_eq!(mac_for(&id), [0x52, 0x54, 0, 0x78, 0x9a, 0xbc]);
        assert_eq!(mac_for(&id), mac_for(&id));
    }
}
