//! `backfillctl`: the operator and tenant command line for a backfill coordinator's API.
//! `main` parses, loads the settings, builds the client, runs one command and maps the outcome
//! to an exit code (see `cli.rs` for the list).

mod accounts;
mod api;
mod cli;
mod config;
mod drive_cli;
mod drives;
mod error;
mod listen;
mod output;
mod report;
mod servers;
mod table;
mod units;
mod webhooks;

use cli::{Cli, Command};
use error::CtlError;
use output::Out;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    backfill_shared::tls::install_default_provider();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stderr().lock().write_all(e.report().as_bytes());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    // The receiver needs no coordinator settings.
    if let Command::Webhook(cli::WebhookCmd::Listen(args)) = cli.command {
        return listen::run(args).await;
    }
    let settings = config::resolve(&cli.global)?;
    let api = api::Api::new(&settings)?;
    let out = Out {
        format: cli.global.output,
    };
    let timeout = Duration::from_secs(cli.global.timeout);
    match cli.command {
        Command::Capabilities => report::capabilities(&api, out).await,
        Command::Server(cmd) => servers::run(&api, out, "servers", cmd, timeout).await,
        Command::Bserver(cmd) => servers::run(&api, out, "bservers", cmd, timeout).await,
        Command::Account(cmd) => accounts::run(&api, out, cmd).await,
        Command::Usage(args) => report::usage(&api, out, args).await,
        Command::Webhook(cmd) => webhooks::run(&api, out, cmd).await,
        Command::Status => report::status(&api, out).await,
        Command::Drive(cmd) => drives::run(&api, out, cmd).await,
        Command::Libdrive(cmd) => drives::run_lib(&api, out, cmd).await,
    }
}
