//! Helpers shared by the CLI's end-to-end tests: running the binary, checking how it exited,
//! and the arguments of the tiny training runs several tests start from.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden diffusers fixture folder under `tests/golden/unet2d/`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/golden/unet2d").join(name)
}

/// `path` as a `&str` (the tests' paths are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Run the `difflab` binary built for these tests.
pub fn difflab<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_difflab"))
        .args(args)
        .output()
        .expect("run difflab")
}

/// What a run wrote to stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a run wrote to stdout, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `difflab` and assert that it succeeded; the failure message shows the arguments and
/// stderr.
pub fn difflab_ok<S: AsRef<OsStr> + Debug>(args: &[S]) -> Output {
    let out = difflab(args);
    assert!(
        out.status.success(),
        "difflab {args:?} failed ({:?}):\n{}",
        out.status.code(),
        stderr(&out)
    );
    out
}

/// Run `difflab` and assert that it failed with `needle` in its stderr; returns that stderr.
pub fn difflab_fails<S: AsRef<OsStr> + Debug>(args: &[S], needle: &str) -> String {
    let out = difflab(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "difflab {args:?} should fail");
    assert!(
        err.contains(needle),
        "difflab {args:?}: stderr should mention {needle:?}:\n{err}"
    );
    err
}

/// The `--set` overrides that shrink `configs/quickstart.yaml` to seconds of CPU work: 8 px
/// shapes, 32 images, channels 8 and 16 without attention, batch 4.
pub const TINY_QUICKSTART: [&str; 6] = [
    "data.resolution=8",
    "data.shapes.num_images=32",
    "model.block_out_channels=[8, 16]",
    "model.attention=[none, none]",
    "model.norm_num_groups=4",
    "training.batch_size=4",
];

/// `difflab train --config <repo>/<config> --out <out> --device cpu`, then `--set <s>` for each
/// of `sets`.
pub fn train_args(config: &str, out: &Path, sets: &[&str]) -> Vec<String> {
    let config = repo().join(config);
    let mut args: Vec<String> = ["train", "--config", s(&config), "--out", s(out)]
        .into_iter()
        .chain(["--device", "cpu"])
        .map(String::from)
        .collect();
    for set in sets {
        args.extend(["--set".to_string(), (*set).to_string()]);
    }
    args
}

/// Train `config` (a path under the repository) into `out` with `sets` on the CPU, asserting
/// success ([`difflab_ok`]).
pub fn train(config: &str, out: &Path, sets: &[&str]) -> Output {
    difflab_ok(&train_args(config, out, sets))
}

/// A fresh (removed if present, not created) temp path unique to this test process and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difflab-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// [`temp_dir`], created.
pub fn made_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
