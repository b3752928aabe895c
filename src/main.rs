//! The `biaslens` command line: a thin layer over the library, one file per subcommand
//! (`biaslens::cli`, in the library so that `python -m biaslens` runs the same code).

/// The eval engine allocates and frees tensors of megabytes per op; glibc's malloc hands them
/// back to the kernel and faults them in again (a fifth of a BoolQ sample's CPU time was system
/// time: 16.9 of 83 s). mimalloc keeps freed pages for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (the bundled version; libmimalloc-sys
/// names no constant for it; Cargo.toml pins that version): -1 keeps freed memory instead of returning it to the kernel,
/// which otherwise zeroes it again on the next fault (4% of an eval run's time).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// MKL (C, outside the Rust allocator) takes its buffers from glibc's malloc: above glibc's
/// sliding mmap threshold each one is mapped, unmapped when freed and faulted in (zeroed) again
/// by the next product. A fixed 32 MiB threshold and no trimming keep them in the heap, as
/// mimalloc keeps the Rust side's (docs/performance.md, "Where the time goes").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_c_heap() {
    // SAFETY: sets two malloc options, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_c_heap() {}

fn main() {
    // SAFETY: sets an allocator option, before any thread is started.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    keep_c_heap();
    // An error is one line: with RUST_BACKTRACE set, library errors (candle's) capture a
    // backtrace and print it inside their message. RUST_LIB_BACKTRACE=1 brings those back;
    // panics keep their backtraces either way. Set before any thread is started.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    std::process::exit(biaslens::cli::main_with_args(std::env::args_os()));
}
