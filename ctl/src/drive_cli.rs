//! The command line of `drive ...` and `libdrive ...` (clap derive).

use crate::units;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DriveCmd {
    /// All drives of this account.
    #[command(visible_alias = "ls")]
    List,
    /// One drive, field by field.
    Show { uuid: String },
    /// Creates a blank drive on a host that runs VMs.
    Create(DriveCreate),
    /// Clones one of this account's drives (a full copy on the same host).
    Clone(DriveClone),
    /// Grows a drive (never shrinks it; not while a running server uses it).
    Resize {
        uuid: String,
        /// The new size: bytes or K/M/G/T (binary).
        #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
        size: u64,
    },
    /// Deletes a drive (not while a running server uses it).
    #[command(visible_alias = "rm")]
    Delete { uuid: String },
    /// Operator (admin certificate): moves a drive to another host, e.g. before its host is
    /// drained. Its servers must be stopped; the copy runs in the background (status
    /// `cloning_src`) and the drive's host changes once the copy is verified.
    Move {
        uuid: String,
        /// The target host's id (a connected host that runs VMs).
        #[arg(long)]
        host: String,
    },
}

#[derive(Debug, Args)]
pub struct DriveCreate {
    #[arg(long)]
    pub name: String,
    /// Bytes or K/M/G/T (binary; 10G).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub size: u64,
    /// `disk` or `cdrom`.
    #[arg(long, default_value = "disk", value_parser = ["disk", "cdrom"])]
    pub media: String,
}

#[derive(Debug, Args)]
pub struct DriveClone {
    pub uuid: String,
    /// The clone's name (the source's with " (clone)" otherwise).
    #[arg(long)]
    pub name: Option<String>,
    /// The clone's size, at least the source's: bytes or K/M/G/T.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub size: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum LibdriveCmd {
    /// The library drives (images) the fleet offers.
    #[command(visible_alias = "ls")]
    List,
    /// One library drive.
    Show { uuid: String },
    /// Clones a library drive into this account's own drive.
    Clone(DriveClone),
}
