//! Entry points: the command line, the daemon (and several coordinators, `ha`), dev mode, the
//! simulator, the local provisioner, and the configuration file they read.

pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev")]
pub mod dev;
pub mod ha;
#[cfg(feature = "dev")]
pub mod local_provisioner;
pub mod simulate;
