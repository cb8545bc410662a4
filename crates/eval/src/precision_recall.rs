//! Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
//! Metric for Assessing Generative Models"): each set's manifold is approximated by balls around
//! its points, with radius the distance to the point's k-th nearest neighbour in its own set.
//!
//! - precision = fraction of generated samples inside the real manifold (fidelity),
//! - recall = fraction of real samples inside the generated manifold (diversity).

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::EvalError;

/// The paper's default neighbourhood size.
pub const DEFAULT_K: usize = 3;

/// Rows of the distance matrix computed at once (bounds memory at `CHUNK × N` f64).
const CHUNK: i64 = 512;

/// Precision and recall, each in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PrecisionRecall {
    /// `(1/M) Σⱼ 1[∃i: |gⱼ − rᵢ| ≤ NNₖ(rᵢ)]` over generated samples `gⱼ`.
    pub precision: f64,
    /// `(1/N) Σᵢ 1[∃j: |rᵢ − gⱼ| ≤ NNₖ(gⱼ)]` over real samples `rᵢ`.
    pub recall: f64,
}

/// Euclidean distances `[n, m]` between the rows of `a` and `b`, chunk by chunk through `f`.
fn for_distance_chunks(a: &Tensor, b: &Tensor, mut f: impl FnMut(i64, Tensor)) {
    let n = a.size()[0];
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        f(start, Tensor::cdist(&a.narrow(0, start, len), b, 2.0, None));
        start += len;
    }
}

/// The distance from each row of `x` to its k-th nearest other row (`[N]`).
fn knn_radii(x: &Tensor, k: usize) -> Tensor {
    let mut radii = Vec::new();
    for_distance_chunks(x, x, |_, d| {
        // The smallest distance of a row is 0 (itself): the k-th neighbour is the (k+1)-th value.
        radii.push(d.kthvalue(k as i64 + 1, 1, false).0);
    });
    Tensor::cat(&radii, 0)
}

/// Fraction of rows of `queries` that fall inside at least one ball `(centres[i], radii[i])`.
fn coverage(queries: &Tensor, centres: &Tensor, radii: &Tensor) -> f64 {
    let mut inside = 0i64;
    for_distance_chunks(queries, centres, |_, d| {
        inside += d
            .le_tensor(&radii.unsqueeze(0))
            .any_dim(1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
    });
    inside as f64 / queries.size()[0] as f64
}

/// k-NN precision and recall of generated features `fake` `[M, D]` against real features
/// `real` `[N, D]` (Kynkäänniemi et al. 2019; `k` = 3 in the paper). Both sets need more than
/// `k` rows. Distances are Euclidean, in f64.
pub fn precision_recall(
    real: &Tensor,
    fake: &Tensor,
    k: usize,
) -> Result<PrecisionRecall, EvalError> {
    let (sr, sf) = (real.size(), fake.size());
    if sr.len() != 2 || sf.len() != 2 || sr[1] != sf[1] {
        return Err(EvalError::Input(format!(
            "precision/recall need [N, D] and [M, D] features, got {sr:?} and {sf:?}"
        )));
    }
    if k == 0 || sr[0] <= k as i64 || sf[0] <= k as i64 {
        return Err(EvalError::Input(format!(
            "precision/recall with k = {k} need more than k samples in each set (got {} real, {} generated)",
            sr[0], sf[0]
        )));
    }
    let real = real.to_device(Device::Cpu).to_kind(Kind::Double);
    let fake = fake.to_device(Device::Cpu).to_kind(Kind::Double);
    let real_radii = knn_radii(&real, k);
    let fake_radii = knn_radii(&fake, k);
    Ok(PrecisionRecall {
        precision: coverage(&fake, &real, &real_radii),
        recall: coverage(&real, &fake, &fake_radii),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(n: i64, shift: f64, scale: f64, seed: i64) -> Tensor {
        crate::seeded_randn(&[n, 4], seed) * scale + shift
    }

    #[test]
    fn high_for_one_distribution() {
        let pr = precision_recall(&normal(800, 0.0, 1.0, 0), &normal(800, 0.0, 1.0, 1), 3).unwrap();
        assert!(pr.precision > 0.8 && pr.recall > 0.8, "{pr:?}");
    }

    #[test]
    fn a_collapsed_generator_is_precise_but_has_low_recall() {
        // Generated samples concentrated near the real mode: inside the real manifold, but they
        // cover little of it.
        let pr = precision_recall(&normal(800, 0.0, 1.0, 0), &normal(800, 0.0, 0.1, 1), 3).unwrap();
        assert!(pr.precision > 0.95, "{pr:?}");
        assert!(pr.recall < 0.3, "{pr:?}");
    }

    #[test]
    fn far_away_samples_have_zero_precision() {
        let pr =
            precision_recall(&normal(300, 0.0, 1.0, 0), &normal(300, 20.0, 1.0, 1), 3).unwrap();
        assert_eq!(pr.precision, 0.0);
        assert_eq!(pr.recall, 0.0);
    }

    #[test]
    fn counts_a_hand_example() {
        // Real points on a line 0, 1, 2, 3 with k = 1: every radius is 1.
        let real = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 3.0]).view([4, 1]);
        let fake = Tensor::from_slice(&[0.5f64, 3.9, 10.0, 11.0]).view([4, 1]);
        let pr = precision_recall(&real, &fake, 1).unwrap();
        assert_eq!(pr.precision, 0.5); // 0.5 and 3.9 (|3.9 − 3| ≤ 1) are inside
        // Fake radii (k = 1): 0.5 → 3.4, 3.9 → 3.4, 10 → 1, 11 → 1: every real point is within
        // 3.4 of 0.5.
        assert_eq!(pr.recall, 1.0);
    }
}
