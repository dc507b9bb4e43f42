//! What both daemons' `main`s share: logging setup and waiting for SIGINT/SIGTERM.

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people (colours only on a terminal).
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `--log-format`, else `BACKFILL_LOG_FORMAT` (containers), else human.
    pub fn resolve(flag: Option<LogFormat>) -> LogFormat {
        flag.or_else(|| {
            std::env::var("BACKFILL_LOG_FORMAT")
                .ok()
                .and_then(|v| <LogFormat as clap::ValueEnum>::from_str(&v, true).ok())
        })
        .unwrap_or_default()
    }
}

/// Logs to stderr (journald picks it up), `RUST_LOG` to filter.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Returns on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
