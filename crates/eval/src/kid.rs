//! Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", §4): the unbiased
//! estimate of the squared maximum mean discrepancy with the cubic polynomial kernel
//! `k(x, y) = (xᵀy / d + 1)³`, averaged over random subsets as in the paper's code.

use difflab_data::epoch_permutation;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::EvalError;

/// How KID draws its subsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KidOptions {
    /// Number of subsets `S` (the paper's code: 100).
    pub subsets: usize,
    /// Subset size `m` (the paper's code: 1000); capped at the smaller set's size.
    pub subset_size: usize,
    /// Seed of the subset draws (permutations from `ChaCha8` keyed by `(seed, s)`).
    pub seed: u64,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// The KID estimate: mean and standard deviation over the subsets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct KidResult {
    /// `KID = (1/S) Σₛ MMD²ᵤ(Xₛ, Yₛ)`.
    pub mean: f64,
    /// Standard deviation of the per-subset estimates.
    pub std: f64,
}

/// The polynomial kernel matrix `(x yᵀ / d + 1)³` of `[n, d]` and `[m, d]` f64 features.
fn poly_kernel(x: &Tensor, y: &Tensor) -> Tensor {
    let d = x.size()[1] as f64;
    (x.matmul(&y.tr()) / d + 1.0).pow_tensor_scalar(3)
}

/// The unbiased MMD² of two equally sized sets under kernel matrices `kxx`, `kyy`, `kxy`:
/// `[Σ_{i≠j} k(xᵢ,xⱼ) + Σ_{i≠j} k(yᵢ,yⱼ)] / (m(m−1)) − 2 Σᵢⱼ k(xᵢ,yⱼ) / m²`
/// (Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6).
pub(crate) fn unbiased_mmd2(kxx: &Tensor, kyy: &Tensor, kxy: &Tensor) -> f64 {
    let n = kxx.size()[0] as f64;
    let m = kyy.size()[0] as f64;
    let off = |k: &Tensor| {
        k.sum(Kind::Double).double_value(&[])
            - k.diagonal(0, 0, 1).sum(Kind::Double).double_value(&[])
    };
    off(kxx) / (n * (n - 1.0)) + off(kyy) / (m * (m - 1.0))
        - 2.0 * kxy.sum(Kind::Double).double_value(&[]) / (n * m)
}

/// KID between feature sets `x` `[N, D]` and `y` `[M, D]`: the mean over `options.subsets`
/// subsets of size `m = min(subset_size, N, M)` (drawn without replacement) of the unbiased
/// MMD² with `k(x, y) = (xᵀy/d + 1)³`. Near 0 (and can be slightly negative) when both come
/// from one distribution. Bińkowski et al. 2018.
pub fn kid(x: &Tensor, y: &Tensor, options: KidOptions) -> Result<KidResult, EvalError> {
    let (sx, sy) = (x.size(), y.size());
    if sx.len() != 2 || sy.len() != 2 || sx[1] != sy[1] {
        return Err(EvalError::Input(format!(
            "KID needs [N, D] and [M, D] features, got {sx:?} and {sy:?}"
        )));
    }
    let m = options.subset_size.min(sx[0] as usize).min(sy[0] as usize);
    if m < 2 || options.subsets == 0 {
        return Err(EvalError::Input(format!(
            "KID needs subsets of at least 2 samples (got {} and {} samples, {} subsets)",
            sx[0], sy[0], options.subsets
        )));
    }
    let x = x.to_device(Device::Cpu).to_kind(Kind::Double);
    let y = y.to_device(Device::Cpu).to_kind(Kind::Double);
    let pick = |t: &Tensor, stream: u64, s: usize| {
        let perm = epoch_permutation(t.size()[0] as usize, options.seed, stream + 2 * s as u64);
        let idx: Vec<i64> = perm[..m].iter().map(|&i| i as i64).collect();
        t.index_select(0, &Tensor::from_slice(&idx))
    };
    let values: Vec<f64> = (0..options.subsets)
        .map(|s| {
            let a = pick(&x, 0, s);
            let b = pick(&y, 1, s);
            unbiased_mmd2(
                &poly_kernel(&a, &a),
                &poly_kernel(&b, &b),
                &poly_kernel(&a, &b),
            )
        })
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Ok(KidResult {
        mean,
        std: var.sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(n: i64, d: i64, shift: f64, seed: i64) -> Tensor {
        crate::seeded_randn(&[n, d], seed) + shift
    }

    #[test]
    fn near_zero_for_one_distribution_and_positive_when_shifted() {
        let options = KidOptions {
            subsets: 20,
            subset_size: 200,
            seed: 0,
        };
        let x = normal(600, 16, 0.0, 0);
        let y = normal(600, 16, 0.0, 1);
        let same = kid(&x, &y, options).unwrap();
        let shifted = kid(&x, &normal(600, 16, 0.5, 2), options).unwrap();
        assert!(same.mean.abs() < 0.02, "{same:?}");
        assert!(shifted.mean > 0.1, "{shifted:?}");
        assert!(
            shifted.mean > 10.0 * same.mean.abs().max(1e-3),
            "{shifted:?} {same:?}"
        );
    }

    #[test]
    fn unbiased_estimate_matches_a_hand_computation() {
        // Two 1-D sets; with d = 1 the kernel is (xy + 1)³.
        let x = Tensor::from_slice(&[0.0f64, 1.0]).view([2, 1]);
        let y = Tensor::from_slice(&[1.0f64, 2.0]).view([2, 1]);
        let k = |a: f64, b: f64| (a * b + 1.0).powi(3);
        let expected = (2.0 * k(0.0, 1.0)) / 2.0 + (2.0 * k(1.0, 2.0)) / 2.0
            - 2.0 * (k(0.0, 1.0) + k(0.0, 2.0) + k(1.0, 1.0) + k(1.0, 2.0)) / 4.0;
        let got = kid(
            &x,
            &y,
            KidOptions {
                subsets: 1,
                subset_size: 2,
                seed: 0,
            },
        )
        .unwrap();
        assert!((got.mean - expected).abs() < 1e-12, "{got:?} {expected}");
    }

    #[test]
    fn rejects_mismatched_features() {
        let e = kid(
            &normal(10, 3, 0.0, 0),
            &normal(10, 4, 0.0, 0),
            KidOptions::default(),
        );
        assert!(e.is_err());
    }
}
