//! The command line (clap derive).

use crate::error::exit;
use crate::units::{self, Limit};
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

const LONG_ABOUT: &str = "\
backfillctl talks to a backfill coordinator's CloudSigma-compatible API over mutual TLS.

Settings come from flags, then environment variables (BACKFILL_API, BACKFILL_CA, BACKFILL_CERT,
BACKFILL_KEY, BACKFILL_CONFIG), then the configuration file ($XDG_CONFIG_HOME/backfill/ctl.toml or
~/.config/backfill/ctl.toml, keys api, ca, cert, key). With `backfill-coordinator dev`:
`. backfill-dev/dev.env` and then `backfillctl capabilities`.";

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  64  usage error (bad flags or values)
  65  the API refused the request (400, 409, other 4xx)
  66  not found (404)
  69  unavailable (cannot connect, TLS handshake failed, 5xx, 503 out of capacity)
  74  the output could not be written
  75  --wait timed out (the request was accepted; it may still complete)
  77  permission denied (401, 403)
  78  configuration problem (missing setting; unreadable certificate, key, CA or config file)";

#[derive(Debug, Parser)]
#[command(
    name = "backfillctl",
    version,
    about = "Operate a backfill coordinator: servers, backfill servers, webhooks, accounts, usage",
    long_about = LONG_ABOUT,
    after_help = "Exit codes: 0 ok, 64 usage, 65 refused, 66 not found, 69 unavailable, \
                  75 --wait timed out, 77 permission, 78 configuration (--help for more)",
    after_long_help = EXIT_CODES,
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// API base, ending in /api/2.0/ (e.g. https://127.0.0.1:8443/api/2.0/).
    #[arg(
        long,
        env = "BACKFILL_API",
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    pub api: Option<String>,
    /// CA certificate (PEM) that verifies the coordinator.
    #[arg(
        long,
        env = "BACKFILL_CA",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM): an account certificate, or an admin one for `account`/`usage`.
    #[arg(
        long,
        env = "BACKFILL_CERT",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long,
        env = "BACKFILL_KEY",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,
    /// Configuration file (TOML: api, ca, cert, key) [default: ~/.config/backfill/ctl.toml].
    #[arg(
        long,
        env = "BACKFILL_CONFIG",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Output: aligned tables, or the API's JSON (pretty) for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true, help_heading = "Global options")]
    pub output: Output,
    /// How long --wait waits, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300,
        global = true,
        help_heading = "Global options"
    )]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Whether this account may backfill, and the free capacity (total / most free host).
    Capabilities,
    /// Normal servers (/servers/).
    #[command(subcommand)]
    Server(ServerCmd),
    /// Backfill servers (/bservers/): cheap, downsized or stopped when the room is needed.
    #[command(subcommand)]
    Bserver(ServerCmd),
    /// Accounts and their quotas (admin certificate).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Usage and cost per server over a period (own account; any with an admin certificate).
    Usage(UsageArgs),
    /// Webhooks (/webhooks/): receivers of this account's server events, their subscriptions
    /// and deliveries.
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// The coordinators sharing this deployment's PostgreSQL and which one leads (admin
    /// certificate; docs/ha.md).
    Status,
    /// Drives (/drives/): this account's disks; attach them with `server create --drive`.
    #[command(subcommand)]
    Drive(crate::drive_cli::DriveCmd),
    /// Library drives (/libdrives/): the images the fleet offers, to clone.
    #[command(subcommand)]
    Libdrive(crate::drive_cli::LibdriveCmd),
}

#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// All servers of this account.
    #[command(visible_alias = "ls")]
    List,
    /// One server, field by field.
    Show { uuid: String },
    /// Creates a server; optionally starts it and waits until it runs.
    Create(CreateArgs),
    /// Starts a server.
    Start(ActionArgs),
    /// Stops a server.
    Stop(ActionArgs),
    /// Shuts a server down (ACPI-style; the coordinator decides how).
    Shutdown(ActionArgs),
    /// Restarts a server.
    Restart { uuid: String },
    /// Deletes a stopped server.
    #[command(visible_alias = "rm")]
    Delete { uuid: String },
    /// Changes a server's name, meta or tags (each given field replaces the old value).
    Edit(EditArgs),
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    pub uuid: String,
    /// Wait (up to --timeout) until the server reaches the action's status.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Server name.
    #[arg(long)]
    pub name: String,
    /// CPU in MHz.
    #[arg(long, value_name = "MHZ")]
    pub cpu: u64,
    /// Memory: bytes or K/M/G/T (binary; 512M, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub mem: u64,
    /// Virtual CPUs.
    #[arg(long, value_name = "N")]
    pub smp: Option<u32>,
    /// Metadata (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = units::parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Priority, -1000 to 1000.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Run the command in its own network namespace (metadata at 169.254.169.254).
    #[arg(long, requires = "command")]
    pub isolated: bool,
    /// Environment of the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = units::parse_kv, requires = "command")]
    pub env: Vec<(String, String)>,
    /// A drive to attach (repeatable): the first boots (boot order 1), the rest follow in
    /// order. A server with drives runs as a VM on the host that holds them.
    #[arg(long = "drive", value_name = "UUID")]
    pub drives: Vec<String>,
    /// Start it once created.
    #[arg(long)]
    pub start: bool,
    /// Start it and wait (up to --timeout) until it runs. Implies --start.
    #[arg(long)]
    pub wait: bool,
    /// The workload: a command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    pub uuid: String,
    #[command(flatten)]
    pub fields: EditFields,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct EditFields {
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Metadata (repeatable); replaces the whole meta map.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = units::parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Tag (repeatable); replaces all tags.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// All accounts, with quota and use.
    #[command(visible_alias = "ls")]
    List,
    /// One account.
    Show { name: String },
    /// Creates an account.
    Create(AccountCreate),
    /// Changes an account's backfill permission or quota.
    Update(AccountUpdate),
    /// Deletes an account.
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct Quota {
    /// CPU quota in MHz, or "unlimited".
    #[arg(long, value_name = "MHZ", value_parser = units::parse_count_limit)]
    pub cpu: Option<Limit>,
    /// Memory quota: bytes or K/M/G/T, or "unlimited".
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_limit)]
    pub mem: Option<Limit>,
    /// GPU quota, or "unlimited".
    #[arg(long, value_name = "N", value_parser = units::parse_count_limit)]
    pub gpus: Option<Limit>,
    /// Quota on the number of servers, or "unlimited".
    #[arg(long, value_name = "N", value_parser = units::parse_count_limit)]
    pub servers: Option<Limit>,
    /// Storage quota for drives: bytes or K/M/G/T, "default" (the coordinator's
    /// `[drives] storage_quota_bytes`) or "unlimited" (whatever the default).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_or_default)]
    pub storage: Option<Limit>,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.mem.is_none()
            && self.gpus.is_none()
            && self.servers.is_none()
            && self.storage.is_none()
    }
}

#[derive(Debug, Args)]
pub struct AccountCreate {
    pub name: String,
    /// Allow backfill servers.
    #[arg(long)]
    pub backfill: bool,
    #[command(flatten)]
    pub quota: Quota,
}

#[derive(Debug, Args)]
pub struct AccountUpdate {
    pub name: String,
    /// Allow (true) or forbid (false) backfill servers.
    #[arg(long, value_name = "true|false")]
    pub backfill: Option<bool>,
    #[command(flatten)]
    pub quota: Quota,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the period: RFC 3339 or Unix seconds [default: 30 days before --end].
    #[arg(long, value_parser = units::parse_time)]
    pub start: Option<String>,
    /// End of the period: RFC 3339 or Unix seconds [default: now].
    #[arg(long, value_parser = units::parse_time)]
    pub end: Option<String>,
    /// Only this account (an account certificate sees only its own).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
}

/// The event types a subscription can name.
pub const EVENT_TYPES: [&str; 4] = [
    "cloud_termination",
    "server_downsized",
    "server_state_changed",
    "perf_factor_restored",
];

/// The server classes a subscription can be narrowed to.
pub const CLASSES: [&str; 3] = ["normal", "backfill", "spot"];

#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// All webhooks of this account, with their subscriptions.
    #[command(visible_alias = "ls")]
    List,
    /// One webhook and its subscriptions.
    Show { uuid: String },
    /// Registers a receiver URL; prints the signing secret, which is never shown again.
    Create(WebhookCreate),
    /// Deletes a webhook with its subscriptions and deliveries.
    #[command(visible_alias = "rm")]
    Delete { uuid: String },
    /// A webhook's subscriptions.
    Subscriptions { uuid: String },
    /// Subscribes a webhook to event types, optionally only for some servers, tags or classes.
    Subscribe(SubscribeArgs),
    /// Removes one of a webhook's subscriptions.
    Unsubscribe { uuid: String, subscription: String },
    /// A webhook's recent deliveries, newest first.
    Deliveries { uuid: String },
    /// Sends a delivery again now, whatever its status.
    Redeliver { uuid: String, delivery: String },
    /// Receives webhook deliveries on this machine, verifies their signature and prints each
    /// event (for trying webhooks out; `dev` allows http receivers on loopback).
    Listen(ListenArgs),
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// The webhook's signing secret (else $BACKFILL_WEBHOOK_SECRET).
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct WebhookCreate {
    /// The receiver: an https URL (http, loopback and private addresses only where the
    /// operator allows them).
    pub url: String,
    /// A note for people, up to 255 characters.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The webhook.
    pub uuid: String,
    /// Event type (repeatable, or comma-separated).
    #[arg(
        long = "event",
        value_name = "TYPE",
        required = true,
        value_delimiter = ',',
        value_parser = PossibleValuesParser::new(EVENT_TYPES)
    )]
    pub events: Vec<String>,
    /// Only events of this server (repeatable).
    #[arg(long = "server", value_name = "UUID")]
    pub servers: Vec<String>,
    /// Only events of servers with this tag (repeatable; any of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only events of servers of this class (repeatable).
    #[arg(long = "class", value_name = "CLASS", value_parser = PossibleValuesParser::new(CLASSES))]
    pub classes: Vec<String>,
}

/// Parses the command line; `Err` carries the exit code after clap printed its message
/// (help and version: 0; anything else: 64).
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("backfillctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let a = try_parse(&["--output", "json", "bserver", "list"]).unwrap();
        let b = try_parse(&["bserver", "list", "--output", "json", "--timeout", "5"]).unwrap();
        assert_eq!(a.global.output, Output::Json);
        assert_eq!(b.global.output, Output::Json);
        assert_eq!(b.global.timeout, 5);
    }

    #[test]
    fn create_takes_the_command_after_the_double_dash() {
        let cli = try_parse(&[
            "bserver",
            "create",
            "--name",
            "x",
            "--cpu",
            "500",
            "--mem",
            "256M",
            "--meta",
            "a=b",
            "--tag",
            "t",
            "--priority",
            "-5",
            "--env",
            "K=V",
            "--wait",
            "--",
            "sleep",
            "--300",
        ])
        .unwrap();
        let Command::Bserver(ServerCmd::Create(c)) = cli.command else {
            panic!("not a create");
        };
        assert_eq!(c.mem, 256 << 20);
        assert_eq!(c.priority, Some(-5));
        assert_eq!(c.command, ["sleep", "--300"]);
        assert_eq!(c.meta, [("a".to_string(), "b".to_string())]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let mem = try_parse(&[
            "server", "create", "--name", "x", "--cpu", "1", "--mem", "12Q",
        ]);
        assert!(mem.unwrap_err().use_stderr());
        assert!(
            try_parse(&[
                "server",
                "create",
                "--name",
                "x",
                "--cpu",
                "1",
                "--mem",
                "1G",
                "--isolated"
            ])
            .is_err()
        );
        assert!(try_parse(&["server", "edit", "u"]).is_err());
        assert!(try_parse(&["usage", "--start", "yesterday"]).is_err());
        assert!(try_parse(&["account", "update", "a", "--backfill", "maybe"]).is_err());
        let help = try_parse(&["--help"]).unwrap_err();
        assert!(!help.use_stderr());
    }

    #[test]
    fn subscribe_takes_events_repeated_or_comma_separated() {
        let cli = try_parse(&[
            "webhook",
            "subscribe",
            "w",
            "--event",
            "cloud_termination,server_downsized",
            "--event",
            "perf_factor_restored",
            "--class",
            "backfill",
            "--tag",
            "a",
            "--tag",
            "b",
        ])
        .unwrap();
        let Command::Webhook(WebhookCmd::Subscribe(s)) = cli.command else {
            panic!("not a subscribe");
        };
        assert_eq!(
            s.events,
            [
                "cloud_termination",
                "server_downsized",
                "perf_factor_restored"
            ]
        );
        assert_eq!(s.classes, ["backfill"]);
        assert_eq!(s.tags, ["a", "b"]);
        assert!(s.servers.is_empty());
        for bad in [
            &["webhook", "subscribe", "w"][..],
            &["webhook", "subscribe", "w", "--event", "server_deleted"],
            &[
                "webhook",
                "subscribe",
                "w",
                "--event",
                "cloud_termination",
                "--class",
                "gpu",
            ],
            &["webhook", "create"],
            &["webhook", "unsubscribe", "w"],
        ] {
            assert!(try_parse(bad).unwrap_err().use_stderr(), "{bad:?}");
        }
    }

    #[test]
    fn account_update_reads_booleans_and_unlimited() {
        let cli = try_parse(&[
            "account",
            "update",
            "acme",
            "--backfill",
            "false",
            "--mem",
            "unlimited",
        ])
        .unwrap();
        let Command::Account(AccountCmd::Update(u)) = cli.command else {
            panic!("not an update");
        };
        assert_eq!(u.backfill, Some(false));
        assert_eq!(u.quota.mem, Some(Limit::Unlimited));
        assert!(u.quota.cpu.is_none());
    }
}
