//! The command line: `run`, `dev`, `pki init|issue`. Each error maps to an exit code.

use crate::cmd::config::{ConfigError, CoordinatorConfig};
use crate::cmd::daemon::{Bound, DaemonError};
use backfill_shared::pki::{Ca, IssueRequest, PkiError, Role};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "backfill-coordinator", version, about = "backfill coordinator")]
pub struct Cli {
    /// Log lines for people or JSON for shippers (default: BACKFILL_LOG_FORMAT, else human).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<backfill_shared::daemon::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator from a configuration file.
    Run {
        #[arg(long, default_value = "/etc/backfill/coordinator.toml")]
        config: PathBuf,
        /// Load and validate the configuration, print what is wrong (file, key, reason), exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Coordinator + a local agent + a throwaway CA, on loopback, in one command.
    #[cfg(feature = "dev")]
    Dev(crate::cmd::dev::DevArgs),
    /// Replay a synthetic workload through the real scheduler with a simulated clock.
    Simulate(crate::cmd::simulate::SimArgs),
    /// Print the API's OpenAPI document (as served at /api/2.0/openapi.json).
    Openapi {
        /// The webhook receiver's document instead (/api/2.0/webhooks/receiver-openapi.json).
        #[arg(long)]
        receiver: bool,
    },
    /// Certificates: the deployment's CA and the certificates it signs.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// The `local` provisioner: start and stop agents on this machine for a pool (dev mode's
    /// `local` pool uses it).
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    ProvisionLocal(crate::cmd::local_provisioner::LocalCommand),
    /// Runs the agent (used by `dev` to start its agent as a child process).
    #[cfg(feature = "dev")]
    #[command(hide = true, disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a CA in DIR (ca.pem, ca.key).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in DIR: DIR/<out>.pem and DIR/<out>.key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// agent, admin, account or coordinator.
        #[arg(long)]
        role: String,
        /// The identity (CN): host id, account name, admin name.
        #[arg(long)]
        name: String,
        /// Subject alternative names (coordinator only): DNS names or IP addresses.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days (1 to 36500).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
        /// File stem (default: the name).
        #[arg(long)]
        out: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[cfg(feature = "dev")]
    #[error(transparent)]
    Dev(#[from] crate::cmd::dev::DevError),
    #[error(transparent)]
    Simulate(#[from] crate::cmd::simulate::SimError),
    #[cfg(feature = "dev")]
    #[error(transparent)]
    Local(#[from] crate::cmd::local_provisioner::LocalError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 64,
            CliError::Pki(PkiError::Io { .. }) => 74,
            CliError::Pki(_) => 64,
            CliError::Daemon(DaemonError::Bind { .. }) => 69,
            CliError::Daemon(DaemonError::Tls(_) | DaemonError::Config(_)) => 64,
            CliError::Daemon(DaemonError::Store(_)) => 74,
            #[cfg(feature = "dev")]
            CliError::Dev(_) => 70,
            CliError::Runtime(_) => 70,
            CliError::Simulate(_) => 64,
            #[cfg(feature = "dev")]
            CliError::Local(crate::cmd::local_provisioner::LocalError::Host(..)) => 64,
            #[cfg(feature = "dev")]
            CliError::Local(_) => 70,
        }
    }
}

pub fn main_exec(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run {
            config,
            check_config,
        } => {
            let cfg = CoordinatorConfig::load(&config)?;
            if check_config {
                println!("{}: ok", config.display());
                return Ok(());
            }
            runtime()?.block_on(run(cfg))
        }
        #[cfg(feature = "dev")]
        Command::Dev(args) => Ok(runtime()?.block_on(crate::cmd::dev::run(args))?),
        Command::Openapi { receiver } => {
            if receiver {
                print!("{}", crate::api::openapi::receiver::document_json());
            } else {
                print!("{}", crate::api::openapi::document_json());
            }
            Ok(())
        }
        Command::Simulate(args) => {
            let trace = match &args.trace {
                Some(p) => Some(crate::cmd::simulate::load_trace(p)?),
                None => None,
            };
            let report = crate::cmd::simulate::run(&args, trace);
            crate::cmd::simulate::print(&report, args.output);
            Ok(())
        }
        Command::Pki(PkiCommand::Init { dir }) => {
            Ca::init(&dir)?;
            println!(
                "CA written to {}",
                dir.join(backfill_shared::pki::CA_CERT_FILE).display()
            );
            Ok(())
        }
        Command::Pki(PkiCommand::Issue {
            dir,
            role,
            name,
            sans,
            days,
            out,
        }) => {
            let role: Role = role.parse()?;
            let ca = Ca::load(&dir)?;
            let stem = out.unwrap_or_else(|| name.clone());
            let (cert, key) =
                ca.issue_to_dir(&dir, &stem, &IssueRequest::new(role, &name, &sans, days))?;
            println!("{} {}", cert.display(), key.display());
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::ProvisionLocal(cmd) => Ok(crate::cmd::local_provisioner::run(cmd)?),
        #[cfg(feature = "dev")]
        Command::Agent { args } => {
            let mut full = vec![std::ffi::OsString::from("backfill-agent")];
            full.extend(args);
            let code = backfill_agent::cli::main_with_args(full);
            std::process::exit(i32::from(code));
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

async fn run(cfg: CoordinatorConfig) -> Result<(), CliError> {
    let bound = Bound::new(&cfg).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        backfill_shared::daemon::wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    bound.run(shutdown).await;
    Ok(())
}

pub fn main() -> ExitCode {
    backfill_shared::tls::install_default_provider();
    let cli = Cli::parse();
    backfill_shared::daemon::init_tracing(backfill_shared::daemon::LogFormat::resolve(
        cli.log_format,
    ));
    match main_exec(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backfill-coordinator: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
