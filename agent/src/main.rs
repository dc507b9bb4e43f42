fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(backfill_agent::cli::main_with_args(
        std::env::args_os().collect(),
    ))
}
