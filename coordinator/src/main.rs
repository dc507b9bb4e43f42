fn main() -> std::process::ExitCode {
    backfill_coordinator::cmd::cli::main()
}
