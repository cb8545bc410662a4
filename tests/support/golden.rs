//! Shared helpers for tests that compare against `tests/golden/` (reference numbers computed by
//! diffusers). Included by crate tests with `#[path = "…/tests/support/golden.rs"] mod golden;`.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;
use tch::{Kind, Tensor};

/// The repository's `tests/golden` folder.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// `tests/golden/schedulers.json`, parsed.
pub fn schedulers_json() -> Value {
    let path = golden_dir().join("schedulers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid golden JSON")
}

/// A JSON array of numbers as `Vec<f64>`.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// A `{shape, data}` object as an f32 tensor.
pub fn tensor(v: &Value) -> Tensor {
    let shape: Vec<i64> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Tensor::from_slice(&f64s(&v["data"]))
        .to_kind(Kind::Float)
        .reshape(&shape[..])
}

/// Tolerance of the golden contract: |a − b| <= ATOL + RTOL·|b|.
pub const RTOL: f64 = 1e-5;
/// Absolute part of the tolerance.
pub const ATOL: f64 = 1e-6;

/// Assert `got` matches `want` elementwise within the golden tolerance, naming `what` and the
/// first offending index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= ATOL + RTOL * w.abs(),
            "{what}[{i}]: got {g:e}, want {w:e} (diff {:e})",
            (g - w).abs()
        );
    }
}

/// Tensor version of [`assert_close`].
pub fn assert_tensor_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let g: Vec<f64> = Vec::try_from(got.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    let w: Vec<f64> = Vec::try_from(want.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    assert_close(what, &g, &w);
}
