//! Helpers shared by the model tests: gradient coverage and safetensors round trips.
#![allow(dead_code)]

use std::path::PathBuf;

use tch::{Kind, Tensor, nn};

/// Every trainable variable of `vs` must have a defined, not-all-zero gradient; the failure
/// lists the parameters that do not.
pub fn assert_every_param_has_grad(vs: &nn::VarStore, what: &str) {
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut bad = Vec::new();
    for (name, var) in names {
        if !var.requires_grad() {
            continue;
        }
        let grad = var.grad();
        if !grad.defined() {
            bad.push(format!("{name} (no gradient)"));
        } else if grad.abs().sum(Kind::Double).double_value(&[]) == 0.0 {
            bad.push(format!("{name} (all-zero gradient)"));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: parameters without gradient: {}",
        bad.join(", ")
    );
}

/// A fresh path for a scratch file named `name` under the test tmp dir.
pub fn scratch_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models_tests");
    std::fs::create_dir_all(&dir).expect("create tmp dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// Largest absolute difference of two tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Whether two tensors are equal bit for bit (same shape, same values).
pub fn bit_identical(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}
