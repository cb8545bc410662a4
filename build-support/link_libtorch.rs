//! Build script of every crate that links libtorch: see `libtorch.rs` beside this file.

#[path = "libtorch.rs"]
mod libtorch;

fn main() {
    libtorch::link();
}
