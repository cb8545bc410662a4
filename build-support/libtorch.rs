//! Build-script helpers shared by every crate that links libtorch (included with `#[path]`).

use std::path::PathBuf;

/// The libtorch root (`LIBTORCH`, set by `.cargo/config.toml` to the `.libtorch` link made by
/// `scripts/setup.sh`), canonicalised.
pub fn root() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    Some(root.canonicalize().unwrap_or(root))
}

/// Bake an rpath to libtorch's `lib/` folder into binaries, tests and benches, so that
/// `cargo test`, `cargo run` and `cargo install --path crates/cli` work without
/// `LD_LIBRARY_PATH`. Also keep `libtorch_cuda` linked (`--no-as-needed`): otherwise the
/// linker drops it (no symbol is referenced directly) and `tch::Cuda::is_available()` reports
/// false even on a GPU machine.
pub fn link() {
    let Some(root) = root() else { return };
    let lib = root.join("lib");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
