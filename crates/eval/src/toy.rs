//! Distances for the 2-D toy (`data.kind: toy2d`), measured against fresh samples of the true
//! distribution (`difflab_data::sample_toy2d_with_noise`): MMD with RBF kernels,
//! the energy distance, and mode coverage.

use std::f64::consts::PI;

use difflab_data::Toy2dKind;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::EvalError;
use crate::kid::unbiased_mmd2;

/// Bandwidths σ of the RBF mixture used by [`mmd_rbf`] by default: from below the eight
/// Gaussians' spread (0.05) to the size of the whole figure (1.0).
pub const TOY_BANDWIDTHS: [f64; 5] = [0.05, 0.1, 0.2, 0.5, 1.0];

/// Parts of the spiral's centre curve (equal length in its parameter) that count as its modes.
pub const SPIRAL_ARCS: usize = 16;

/// A mode is covered when it receives at least this fraction of its fair share `N/K` of the
/// samples.
pub const COVERAGE_SHARE: f64 = 0.25;

fn points(x: &Tensor, what: &str) -> Result<Tensor, EvalError> {
    let s = x.size();
    if s.len() != 2 || s[0] < 2 {
        return Err(EvalError::Input(format!(
            "{what} needs [N, D] points with N >= 2, got {s:?}"
        )));
    }
    Ok(x.to_device(Device::Cpu).to_kind(Kind::Double))
}

/// Unbiased MMD² (Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6) between point sets
/// `x` `[N, D]` and `y` `[M, D]` with the mixture kernel
/// `k(a, b) = (1/|Σ|) Σ_{σ ∈ bandwidths} exp(−|a − b|² / (2σ²))`
/// ([`TOY_BANDWIDTHS`] unless given). About 0 (possibly slightly negative) for one distribution.
pub fn mmd_rbf(x: &Tensor, y: &Tensor, bandwidths: &[f64]) -> Result<f64, EvalError> {
    let x = points(x, "MMD")?;
    let y = points(y, "MMD")?;
    if bandwidths.is_empty() || x.size()[1] != y.size()[1] {
        return Err(EvalError::Input(
            "MMD needs at least one bandwidth and points of one dimension".into(),
        ));
    }
    let kernel = |a: &Tensor, b: &Tensor| {
        let d2 = Tensor::cdist(a, b, 2.0, None).square();
        let mut k = d2.zeros_like();
        for s in bandwidths {
            k += (&d2 / (-2.0 * s * s)).exp();
        }
        k / bandwidths.len() as f64
    };
    Ok(unbiased_mmd2(
        &kernel(&x, &x),
        &kernel(&y, &y),
        &kernel(&x, &y),
    ))
}

/// The energy distance (Székely & Rizzo 2013, "Energy statistics: A class of statistics based
/// on distances"): `E = 2 E|X − Y| − E|X − X'| − E|Y − Y'|`, with the within-set means over
/// distinct pairs (U-statistics). Zero exactly when the distributions are equal; the estimate
/// is unbiased, so about 0 (possibly slightly negative) for two samples of one distribution.
pub fn energy_distance(x: &Tensor, y: &Tensor) -> Result<f64, EvalError> {
    let x = points(x, "energy distance")?;
    let y = points(y, "energy distance")?;
    let mean_all = |a: &Tensor, b: &Tensor| {
        Tensor::cdist(a, b, 2.0, None)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let within = |a: &Tensor| {
        let n = a.size()[0] as f64;
        // The diagonal is zero: the sum over distinct pairs is the full sum.
        Tensor::cdist(a, a, 2.0, None)
            .sum(Kind::Double)
            .double_value(&[])
            / (n * (n - 1.0))
    };
    Ok(2.0 * mean_all(&x, &y) - within(&x) - within(&y))
}

/// Which mode a point belongs to, if any.
type ModeOf = Box<dyn Fn(f64, f64) -> Option<usize>>;

/// How many of a toy distribution's modes the samples reach.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeCoverage {
    /// `modes_covered / modes`.
    pub coverage: f64,
    /// Modes that received at least [`COVERAGE_SHARE`]·N/K samples.
    pub modes_covered: usize,
    /// K, the number of modes.
    pub modes: usize,
    /// Fraction of samples that fall in some mode (a "quality" rate).
    pub in_mode_fraction: f64,
    /// Samples per mode.
    pub counts: Vec<usize>,
    /// How a mode is defined for this dataset.
    pub definition: String,
}

/// Mode coverage of 2-D samples of a toy dataset with spread `noise`:
///
/// - `eight_gaussians`: 8 modes, the Gaussians; a sample is in the mode of the nearest centre
///   when within 3σ = 3·noise of it.
/// - `disc_grid`: 16 modes, the discs; in the nearest disc's mode when within 1.5·noise of its
///   centre (the discs have radius `noise`).
/// - `spiral` has no discrete modes: its centre curve is cut into [`SPIRAL_ARCS`] arcs of equal
///   parameter length and a sample belongs to the arc of its nearest curve point when it lies
///   within `noise` of the curve (true samples lie within noise/2).
///
/// A mode is covered when it holds at least [`COVERAGE_SHARE`] of its fair share `N/K`
/// (cf. the "modes captured" counts of Srivastava et al. 2017, VEEGAN, which count modes with
/// enough high-quality samples).
pub fn mode_coverage(kind: Toy2dKind, noise: f32, samples: &[[f32; 2]]) -> ModeCoverage {
    let noise = noise as f64;
    let (modes, definition, assign): (usize, String, ModeOf) = match kind {
        Toy2dKind::EightGaussians => (
            8,
            format!(
                "8 Gaussians; a sample within 3σ = {:.3} of a centre",
                3.0 * noise
            ),
            Box::new(move |x, y| {
                nearest_centre(
                    x,
                    y,
                    (0..8).map(|k| {
                        let a = k as f64 * PI / 4.0;
                        (a.cos(), a.sin())
                    }),
                    3.0 * noise,
                )
            }),
        ),
        Toy2dKind::DiscGrid => (
            16,
            format!(
                "16 discs; a sample within {:.3} of a disc centre",
                1.5 * noise
            ),
            Box::new(move |x, y| {
                let c = |k: usize| (k as f64 - 1.5) / 1.5;
                nearest_centre(x, y, (0..16).map(|k| (c(k / 4), c(k % 4))), 1.5 * noise)
            }),
        ),
        Toy2dKind::Spiral => (
            SPIRAL_ARCS,
            format!(
                "spiral (no discrete modes): {SPIRAL_ARCS} equal arcs of the centre curve; a sample within {noise:.3} of the curve counts for the arc of its nearest curve point"
            ),
            Box::new(move |x, y| {
                let (u, d) = nearest_on_spiral(x, y);
                (d <= noise).then(|| ((u * SPIRAL_ARCS as f64) as usize).min(SPIRAL_ARCS - 1))
            }),
        ),
    };
    let mut counts = vec![0usize; modes];
    let mut in_mode = 0usize;
    for p in samples {
        if let Some(m) = assign(p[0] as f64, p[1] as f64) {
            counts[m] += 1;
            in_mode += 1;
        }
    }
    let n = samples.len().max(1) as f64;
    let needed = (COVERAGE_SHARE * n / modes as f64).max(1.0);
    let modes_covered = counts.iter().filter(|&&c| c as f64 >= needed).count();
    ModeCoverage {
        coverage: modes_covered as f64 / modes as f64,
        modes_covered,
        modes,
        in_mode_fraction: in_mode as f64 / n,
        counts,
        definition,
    }
}

/// Index of the nearest centre if it is within `radius`.
fn nearest_centre(
    x: f64,
    y: f64,
    centres: impl Iterator<Item = (f64, f64)>,
    radius: f64,
) -> Option<usize> {
    let (best, d2) = centres
        .enumerate()
        .map(|(i, (cx, cy))| (i, (x - cx).powi(2) + (y - cy).powi(2)))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    (d2.sqrt() <= radius).then_some(best)
}

/// The parameter `u` ∈ [0, 1] of the spiral centre-curve point nearest to `(x, y)`, and the
/// distance to it (the curve of `difflab_data` toy2d: angle 3πu, radius
/// 0.325 + 0.65u), on a 2048-segment polyline.
fn nearest_on_spiral(x: f64, y: f64) -> (f64, f64) {
    const SEGMENTS: usize = 2048;
    let at = |i: usize| {
        let u = i as f64 / SEGMENTS as f64;
        let (t, r) = (3.0 * PI * u, 0.325 + 0.65 * u);
        (r * t.cos(), r * t.sin())
    };
    let mut best = (0.0, f64::INFINITY);
    let mut a = at(0);
    for i in 0..SEGMENTS {
        let b = at(i + 1);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let t = (((x - a.0) * dx + (y - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
        let d = ((a.0 + t * dx - x).powi(2) + (a.1 + t * dy - y).powi(2)).sqrt();
        if d < best.1 {
            best = ((i as f64 + t) / SEGMENTS as f64, d);
        }
        a = b;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use difflab_data::sample_toy2d;

    fn tensor(points: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([points.len() as i64, 2])
    }

    #[test]
    fn distances_are_near_zero_for_one_distribution_and_grow_with_a_shift() {
        for kind in [
            Toy2dKind::Spiral,
            Toy2dKind::EightGaussians,
            Toy2dKind::DiscGrid,
        ] {
            let a = tensor(&sample_toy2d(kind, 800, 1));
            let b = tensor(&sample_toy2d(kind, 800, 2));
            let mmd_same = mmd_rbf(&a, &b, &TOY_BANDWIDTHS).unwrap();
            let energy_same = energy_distance(&a, &b).unwrap();
            let mut last = (mmd_same, energy_same);
            for shift in [0.05, 0.2, 0.5] {
                let c = &b + shift;
                let m = mmd_rbf(&a, &c, &TOY_BANDWIDTHS).unwrap();
                let e = energy_distance(&a, &c).unwrap();
                assert!(
                    m > last.0 && e > last.1,
                    "{kind:?} {shift}: {m} {e} after {last:?}"
                );
                last = (m, e);
            }
            assert!(
                mmd_same.abs() < 0.01 && energy_same.abs() < 0.01,
                "{kind:?} {mmd_same} {energy_same}"
            );
            assert!(last.0 > 20.0 * mmd_same.abs() && last.1 > 20.0 * energy_same.abs());
        }
    }

    #[test]
    fn true_samples_cover_every_mode_and_a_collapsed_set_does_not() {
        for kind in [
            Toy2dKind::Spiral,
            Toy2dKind::EightGaussians,
            Toy2dKind::DiscGrid,
        ] {
            let true_points = sample_toy2d(kind, 2000, 3);
            let c = mode_coverage(kind, kind.default_noise(), &true_points);
            assert_eq!(c.coverage, 1.0, "{kind:?} {c:?}");
            assert!(c.in_mode_fraction > 0.98, "{kind:?} {c:?}");
            // Keep only the samples nearest to the first one: one or two modes.
            let first = true_points[0];
            let collapsed: Vec<[f32; 2]> = true_points
                .iter()
                .filter(|p| (p[0] - first[0]).hypot(p[1] - first[1]) < 0.3)
                .copied()
                .collect();
            let c = mode_coverage(kind, kind.default_noise(), &collapsed);
            assert!(c.coverage <= 0.25, "{kind:?} {c:?}");
        }
    }

    #[test]
    fn nearest_point_on_the_spiral() {
        let (u, d) = nearest_on_spiral(0.325, 0.0);
        assert!(u < 1e-6 && d < 1e-9);
        let (t, r) = (3.0 * PI * 0.6, 0.325 + 0.65 * 0.6);
        let (u, d) = nearest_on_spiral(r * t.cos(), r * t.sin());
        assert!((u - 0.6).abs() < 1e-3 && d < 1e-5, "{u} {d}");
    }
}
