//! Links Intel MKL when the `mkl` feature is on (src/model/mkl.rs); does nothing otherwise.
//!
//! MKL's static archives reference each other both ways, so they go to the linker as one group,
//! followed by GNU OpenMP (MKL's threading layer here) and the C runtime libraries it needs.
//! `cargo:rustc-link-arg` reaches this package's binaries, tests and benches; another crate that
//! turns the feature on must link MKL itself.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BIASLENS_MKL_LIB");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("BIASLENS_MKL_LIB").map(PathBuf::from) else {
        panic!(
            "the `mkl` feature needs BIASLENS_MKL_LIB, the folder with MKL's static archives: \
             run `eval \"$(harness/mkl.sh)\"` first (it installs them from PyPI)"
        );
    };
    let archives = [
        "libmkl_intel_lp64.a",
        "libmkl_gnu_thread.a",
        "libmkl_core.a",
    ];
    let mut args = vec!["-Wl,--start-group".to_string()];
    for name in archives {
        let path = dir.join(name);
        if !path.is_file() {
            panic!(
                "BIASLENS_MKL_LIB={}: no {name} there (run `eval \"$(harness/mkl.sh)\"`)",
                dir.display()
            );
        }
        println!("cargo:rerun-if-changed={}", path.display());
        args.push(path.display().to_string());
    }
    args.push("-Wl,--end-group".to_string());
    for arg in args {
        println!("cargo:rustc-link-arg={arg}");
    }
    for lib in ["gomp", "pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
