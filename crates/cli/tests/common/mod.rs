//! Helpers shared by the CLI's end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden diffusers fixture folder under `tests/golden/unet2d/`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/golden/unet2d").join(name)
}

/// Run the `difflab` binary built for these tests.
pub fn difflab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_difflab"))
        .args(args)
        .output()
        .expect("run difflab")
}

/// A fresh (removed if present, not created) temp path unique to this test process and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difflab-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
