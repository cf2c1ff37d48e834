//! The `finguard` binary: parse the command line, hand over to the library,
//! map the outcome to an exit code (0 ok, 1 bad config or arguments, 2 runtime).

/// A proxy allocates and frees many small buffers per request; mimalloc's
/// per-thread free lists measured faster than glibc malloc here (see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    finguard::cli::main()
}
