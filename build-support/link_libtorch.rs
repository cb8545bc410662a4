//! Shared build script for every crate that links libtorch.
//!
//! Bakes an rpath to libtorch's `lib/` folder into binaries, tests and benches, so that
//! `cargo test`, `cargo run` and `cargo install --path crates/cli` work without
//! `LD_LIBRARY_PATH`. Also forces `libtorch_cuda` to stay linked (`--no-as-needed`):
//! otherwise the linker drops it (no symbol is referenced directly) and
//! `tch::Cuda::is_available()` reports false even on a GPU machine.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        return;
    };
    // Canonicalise so the rpath survives the `.libtorch` symlink being moved.
    let root = PathBuf::from(root);
    let root = root.canonicalize().unwrap_or(root);
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
