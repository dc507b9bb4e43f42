fn main() -> std::process::ExitCode {
    backfill_coordinator::cli::main()
}
