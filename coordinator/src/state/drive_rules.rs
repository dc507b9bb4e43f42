//! The rules a server's drives follow: what may be attached, what a server with drives runs,
//! and when it may start. Pure: the model in, a verdict out.

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::state::coordinator::OpError;
use crate::state::model::Model;
use crate::store::{DriveRecord, DriveStatus};
use backfill_shared::drive::DriveId;
use backfill_shared::drive::{DriveAttachment, MAX_ATTACHED};
use backfill_shared::{HostId, ServerId};
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// Checks a server's requested drives and fills in each one's media: they exist, are the
/// owner's, are ready, are not attached to another server, are all on one host, and their
/// boot orders are unique.
pub fn check_attachments(
    model: &Model,
    owner: &Account,
    server: Option<ServerId>,
    drives: Vec<DriveAttachment>,
) -> Result<Vec<DriveAttachment>, OpError> {
    let invalid = |message: String| OpError::Invalid {
        field: "drives",
        message,
    };
    if drives.len() > MAX_ATTACHED {
        return Err(invalid(format!(
            "a server has at most {MAX_ATTACHED} drives"
        )));
    }
    if drives.is_empty() {
        return Ok(drives);
    }
    let mut seen = BTreeSet::new();
    let mut orders = BTreeSet::new();
    let mut host: Option<&HostId> = None;
    let mut out = Vec::with_capacity(drives.len());
    for mut a in drives {
        let d = owned(model, owner, a.drive)?;
        if !seen.insert(a.drive) {
            return Err(invalid(format!("drive {} is listed twice", a.drive)));
        }
        if let Some(b) = a.boot_order
            && !orders.insert(b)
        {
            return Err(invalid(format!("boot_order {b} is given to two drives")));
        }
        if let Some(other) = model
            .mounts()
            .of(a.drive)
            .iter()
            .find(|s| Some(**s) != server)
        {
            return Err(OpError::Conflict(format!(
                "drive {} is attached to server {other}; detach it there first",
                a.drive
            )));
        }
        if d.status != DriveStatus::Ready && d.status != DriveStatus::Creating {
            return Err(invalid(format!(
                "drive {} is {}: {}",
                a.drive,
                d.status.as_str(),
                d.error.as_deref().unwrap_or("it cannot be attached")
            )));
        }
        match host {
            Some(h) if *h != d.host => {
                return Err(invalid(format!(
                    "drive {} is on host {}, the others on {h}: a server's drives must be on one host",
                    a.drive, d.host
                )));
            }
            _ => host = Some(&d.host),
        }
        a.media = d.media;
        out.push(a);
    }
    Ok(out)
}

/// What a server with `drives` runs: a VM booting from its drive with boot order 1 (or a
/// kernel given directly). Drives are for VMs; a VM boots from its drives or an image.
pub fn runs_with_drives(
    workload: Option<&backfill_shared::Workload>,
    drives: &[DriveAttachment],
) -> Result<Option<backfill_shared::Workload>, OpError> {
    if drives.is_empty() {
        return Ok(workload.cloned());
    }
    let invalid = |message: &str| OpError::Invalid {
        field: "drives",
        message: message.into(),
    };
    if let Some(w) = workload
        && (w.vm.is_none() || !w.command.is_empty() || w.container.is_some())
    {
        return Err(invalid(
            "drives are for VMs: leave workload out (the server boots from its drive with boot_order 1) or give a \"vm\" workload",
        ));
    }
    if workload
        .and_then(|w| w.vm.as_ref())
        .is_some_and(|vm| vm.image.is_some())
    {
        return Err(invalid(
            "a vm boots from its drive with boot_order 1 or from workload.vm.image, not both",
        ));
    }
    Ok(crate::state::model::with_drives(workload, drives))
}

/// Before a start: every drive is made, and its host is there. A host that is gone fails the
/// start, naming the drive (the server can run only where its drives are).
pub fn check_startable(model: &Model, s: &ServerRecord) -> Result<(), OpError> {
    for a in &s.drives {
        crate::state::drive_moves::refuse_moving(model, a.drive, "start the server")?;
        let Some(d) = model.drives.get(&a.drive) else {
            return Err(OpError::Invalid {
                field: "drives",
                message: format!("drive {} no longer exists; detach it", a.drive),
            });
        };
        match d.status {
            DriveStatus::Ready => {}
            DriveStatus::Creating => {
                return Err(OpError::Conflict(format!(
                    "drive {} is still being made on host {}; start the server when its status is unmounted",
                    d.uuid, d.host
                )));
            }
            _ => {
                return Err(OpError::Invalid {
                    field: "drives",
                    message: format!(
                        "drive {} is {}: {}",
                        d.uuid,
                        d.status.as_str(),
                        d.error.as_deref().unwrap_or("detach it")
                    ),
                });
            }
        }
        if !model.hosts.get(&d.host).is_some_and(|h| h.schedulable()) {
            return Err(OpError::NeverFits(format!(
                "drive {} is on host {}, which is down or held: the server can run only there \
                 (an operator can move the drive: see docs/drives.md)",
                d.uuid, d.host
            )));
        }
    }
    Ok(())
}

/// Whether two lists attach the same drives the same way (the media is the coordinator's to
/// fill in, so a client sending a GET back does not change it).
pub fn same_attachments(a: &[DriveAttachment], b: &[DriveAttachment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.drive, x.boot_order, &x.dev_channel, x.device)
                == (y.drive, y.boot_order, &y.dev_channel, y.device)
        })
}

/// Servers each drive is attached to: a borrow of the model's index (kept as servers change:
/// no walk over the fleet).
pub(crate) fn mounts(model: &Model) -> Mounts<'_> {
    Mounts(model.mounts().all())
}

/// The model's drive -> servers index, as [`mounts`] lends it (a drive view takes it as the
/// map it derefs to).
pub(crate) struct Mounts<'m>(&'m BTreeMap<DriveId, Vec<ServerId>>);

impl std::ops::Deref for Mounts<'_> {
    type Target = BTreeMap<DriveId, Vec<ServerId>>;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

/// The tenant's drive `id` (a deleted one or another tenant's is "not found").
pub(crate) fn owned<'m>(
    model: &'m Model,
    owner: &Account,
    id: DriveId,
) -> Result<&'m DriveRecord, OpError> {
    model
        .drives
        .get(&id)
        .filter(|d| d.owner == owner.name && d.status != DriveStatus::Deleting)
        .ok_or(OpError::DriveNotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_shared::Media;
    use backfill_shared::drive::{DriveDevice, DriveId};

    #[test]
    fn a_get_sent_back_attaches_the_same_drives() {
        let a = DriveAttachment {
            drive: DriveId::from_u128(1),
            boot_order: Some(2),
            dev_channel: "0:1".into(),
            device: DriveDevice::Ide,
            media: Media::Cdrom,
        };
        // A PUT body does not carry the media: parsed as a disk, still the same attachment.
        let parsed = DriveAttachment {
            media: Media::Disk,
            ..a.clone()
        };
        assert!(same_attachments(std::slice::from_ref(&a), &[parsed]));
        let moved = DriveAttachment {
            boot_order: Some(1),
            ..a.clone()
        };
        assert!(!same_attachments(std::slice::from_ref(&a), &[moved]));
        assert!(!same_attachments(&[a], &[]));
    }
}
