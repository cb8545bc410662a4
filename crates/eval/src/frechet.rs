//! The Fréchet distance between Gaussians fitted to two feature sets — FID's formula (Heusel
//! et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
//! Equilibrium"), here in the feature space of difflab's own classifier ("classifier-FID").
//!
//! Everything is computed in f64. The matrix square root uses the symmetric eigendecomposition
//! (`torch.linalg.eigh`) of symmetric positive semi-definite matrices only: with
//! `A = S₁^½` (from the eigendecomposition of `S₁`), `tr((S₁ S₂)^½) = tr((A S₂ A)^½)` because
//! `S₁ S₂` is similar to `A S₂ A`, which is symmetric PSD, so its trace square root is the sum
//! of the square roots of its (clamped non-negative) eigenvalues. Unlike scipy's `sqrtm` of the
//! non-symmetric product, this never produces imaginary parts, and it handles singular
//! covariances (dead ReLU units) without an ε on the diagonal.

use tch::{Device, Kind, Tensor};

use crate::EvalError;

/// Mean and covariance of a feature set, in f64 on the CPU.
#[derive(Debug)]
pub struct FeatureStats {
    /// `μ = (1/N) Σ xᵢ`, shape `[D]`.
    pub mean: Tensor,
    /// `Σ = 1/(N−1) Σ (xᵢ − μ)(xᵢ − μ)ᵀ` (unbiased), shape `[D, D]`.
    pub cov: Tensor,
    /// `N`, the number of feature vectors.
    pub count: i64,
}

impl FeatureStats {
    /// Statistics of `features` `[N, D]` (any float dtype or device), `N ≥ 2`.
    pub fn from_features(features: &Tensor) -> Result<Self, EvalError> {
        let size = features.size();
        if size.len() != 2 || size[0] < 2 {
            return Err(EvalError::Input(format!(
                "feature statistics need [N, D] features with N >= 2, got {size:?}"
            )));
        }
        let x = features.to_device(Device::Cpu).to_kind(Kind::Double);
        let mean = x.mean_dim(0, false, Kind::Double);
        let centred = &x - mean.unsqueeze(0);
        let cov = centred.tr().matmul(&centred) / (size[0] - 1) as f64;
        Ok(Self {
            mean,
            cov,
            count: size[0],
        })
    }

    /// The statistics as named tensors (`mean`, `cov`, `count`) for a safetensors file.
    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        vec![
            ("mean".into(), self.mean.shallow_clone()),
            ("cov".into(), self.cov.shallow_clone()),
            ("count".into(), Tensor::from_slice(&[self.count])),
        ]
    }

    /// Read statistics written by [`FeatureStats::to_named`] from a safetensors file.
    pub fn load(path: &std::path::Path) -> Result<Self, EvalError> {
        let named = Tensor::read_safetensors(path).map_err(|e| EvalError::file(path, e))?;
        let get = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| EvalError::file(path, format!("no tensor `{name}`")))
        };
        let mean = get("mean")?.to_kind(Kind::Double);
        let cov = get("cov")?.to_kind(Kind::Double);
        let count = get("count")?.int64_value(&[0]);
        let d = mean.size()[0];
        if cov.size() != [d, d] {
            return Err(EvalError::file(
                path,
                format!("cov has shape {:?}, mean {:?}", cov.size(), mean.size()),
            ));
        }
        Ok(Self { mean, cov, count })
    }
}

/// The principal square root of a symmetric positive semi-definite matrix `a` `[D, D]`:
/// `a = V diag(λ) Vᵀ` (`linalg_eigh`) ↦ `V diag(√max(λ, 0)) Vᵀ`, computed in f64.
pub fn sqrtm_psd(a: &Tensor) -> Tensor {
    let a = a.to_kind(Kind::Double);
    let sym = (&a + a.tr()) / 2.0;
    let (eigvals, eigvecs) = sym.linalg_eigh("L");
    let root = eigvals.clamp_min(0.0).sqrt();
    (&eigvecs * root.unsqueeze(0)).matmul(&eigvecs.tr())
}

/// The squared Fréchet (2-Wasserstein) distance between `N(μ₁, Σ₁)` and `N(μ₂, Σ₂)`:
///
/// `d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)`
///
/// (Dowson & Landau 1982; FID uses it on Inception features, Heusel et al. 2017). Computed in
/// f64 with [`sqrtm_psd`] (see the module docs); tiny negative round-off is clamped to 0.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, EvalError> {
    if a.mean.size() != b.mean.size() {
        return Err(EvalError::Input(format!(
            "feature dimensions differ: {:?} vs {:?}",
            a.mean.size(),
            b.mean.size()
        )));
    }
    let diff = (&a.mean - &b.mean)
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    let root_a = sqrtm_psd(&a.cov);
    let middle = root_a.matmul(&b.cov.to_kind(Kind::Double)).matmul(&root_a);
    let middle = (&middle + middle.tr()) / 2.0;
    let eig = middle.linalg_eigvalsh("L").clamp_min(0.0);
    let cross = eig.sqrt().sum(Kind::Double).double_value(&[]);
    let trace = a.cov.trace().double_value(&[]) + b.cov.trace().double_value(&[]);
    Ok((diff + trace - 2.0 * cross).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean: &[f64], cov: Tensor) -> FeatureStats {
        FeatureStats {
            mean: Tensor::from_slice(mean),
            cov,
            count: 100,
        }
    }

    #[test]
    fn sqrtm_squares_back() {
        let b = crate::seeded_randn(&[6, 6], 0);
        let a = b.matmul(&b.tr());
        let r = sqrtm_psd(&a);
        let err = (r.matmul(&r) - &a).abs().max().double_value(&[]);
        assert!(err < 1e-9, "{err}");
    }

    #[test]
    fn matches_the_closed_form_for_diagonal_gaussians() {
        // Diagonal covariances: d² = |μ₁−μ₂|² + Σ (√a_i − √b_i)².
        let a = [1.0, 4.0, 0.25];
        let b = [9.0, 1.0, 0.25];
        let s1 = stats(&[0.0, 1.0, 2.0], Tensor::from_slice(&a).diag(0));
        let s2 = stats(&[1.0, -1.0, 2.0], Tensor::from_slice(&b).diag(0));
        let expected = 1.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
        let d = frechet_distance(&s1, &s2).unwrap();
        assert!((d - expected).abs() < 1e-10, "{d} vs {expected}");
    }

    #[test]
    fn matches_the_closed_form_for_commuting_full_covariances() {
        // Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ share eigenvectors: the trace term is
        // Σ (√a_i − √b_i)², whatever the rotation Q.
        let r = crate::seeded_randn(&[4, 4], 1);
        let (_, q) = (&r + r.tr()).linalg_eigh("L");
        let a = [2.0f64, 0.5, 3.0, 1.0];
        let b = [0.5f64, 2.0, 3.0, 0.0];
        let make = |v: &[f64]| q.matmul(&Tensor::from_slice(v).diag(0)).matmul(&q.tr());
        let s1 = stats(&[0.0; 4], make(&a));
        let s2 = stats(&[0.5, 0.0, 0.0, 0.0], make(&b));
        let expected: f64 = 0.25
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let d = frechet_distance(&s1, &s2).unwrap();
        // f64 eigendecompositions agree to ~1e-8 across thread schedules; 1e-6 still pins the formula.
        assert!((d - expected).abs() < 1e-6, "{d} vs {expected}");
        assert!(frechet_distance(&s1, &s1).unwrap() < 1e-9);
    }

    #[test]
    fn sample_statistics_approach_the_closed_form() {
        let x = crate::seeded_randn(&[20000, 2], 2);
        let y = crate::seeded_randn(&[20000, 2], 3) * 2.0 + 1.0;
        let d = frechet_distance(
            &FeatureStats::from_features(&x).unwrap(),
            &FeatureStats::from_features(&y).unwrap(),
        )
        .unwrap();
        // |μ|² = 2, trace term = 2 (1 − 2)² = 2.
        assert!((d - 4.0).abs() < 0.1, "{d}");
    }
}
