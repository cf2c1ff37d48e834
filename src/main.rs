//! The `finguard` binary: parse the command line, hand over to the library,
//! map the outcome to an exit code (0 ok, 1 bad config or arguments, 2 runtime).

/// A proxy allocates and frees many small buffers per request; mimalloc's
/// per-thread free lists measured faster than glibc malloc here (see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages: the heap then grows 2 MiB at
    // a time, and the few hundred bytes of each idle connection show as
    // whole huge pages (2,000 idle keep-alive connections measured 2,179 B
    // each with them, 561 B without). A proxy's heap is small; its TLB gains
    // nothing worth that. First thing, before the heap grows; an explicit
    // `MIMALLOC_ALLOW_THP` is the operator's choice.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = finguard::sys::disable_thp();
    }
    finguard::cli::main()
}
