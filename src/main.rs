//! The `finguard` binary: parse the command line, hand over to the library,
//! map the outcome to an exit code (0 ok, 1 bad config or arguments, 2 runtime).

fn main() -> std::process::ExitCode {
    finguard::cli::main()
}
