//! `kind: toy2d`: 2-D point clouds for showing DDPM end to end with the MLP denoiser. Points
//! are used as they are (no normalisation), all within about [−1.15, 1.15]²:
//!
//! - `spiral` (the seed notebook's): `u ~ U(0, 1)`, angle `θ = 3πu` (1.5 turns), radius
//!   `ρ = 0.325 + 0.65u + noise·(v − ½)` with `v ~ U(0, 1)`: a band of width `noise` (0.15)
//!   around the centre curve `ρ = 0.325 + 0.65u`, radius from 0.25 to 1.05.
//! - `disc_grid` (the seed's): 4×4 discs of radius `noise` (0.1), uniform inside, centred on
//!   {−1, −⅓, ⅓, 1}².
//! - `eight_gaussians`: eight isotropic Gaussians of standard deviation `noise` (0.05) centred
//!   at `(cos kπ/4, sin kπ/4)`.
//!
//! Point `i` uses a fixed number of draws from one stream, so the first `m` points of a sample
//! of `n` are the sample of `m`.

use std::f64::consts::{PI, TAU};
use std::sync::OnceLock;

use super::rng::{Stream, below, keyed_rng, normal_pair, unit_f64};
use super::{DataConfig, DataError, Dataset, Example, Toy2dKind, limited};

/// `n` points of `kind` with its default spread, deterministic in `seed` (reference samples for
/// evaluation).
pub fn sample_toy2d(kind: Toy2dKind, n: usize, seed: u64) -> Vec<[f32; 2]> {
    sample_toy2d_with_noise(kind, n, seed, kind.default_noise())
}

/// `n` points of `kind` with spread `noise` (see the module docs), deterministic in `seed`.
pub fn sample_toy2d_with_noise(kind: Toy2dKind, n: usize, seed: u64, noise: f32) -> Vec<[f32; 2]> {
    let noise = noise as f64;
    let mut rng = keyed_rng(Stream::Toy2d, seed, kind as u64, 0);
    (0..n)
        .map(|_| {
            let (x, y) = match kind {
                Toy2dKind::Spiral => {
                    let u = unit_f64(&mut rng);
                    let v = unit_f64(&mut rng);
                    let (theta, rho) = spiral_polar(u);
                    let rho = rho + noise * (v - 0.5);
                    (rho * theta.cos(), rho * theta.sin())
                }
                Toy2dKind::DiscGrid => {
                    let a = unit_f64(&mut rng) * TAU;
                    let b = unit_f64(&mut rng).sqrt() * noise;
                    let q = below(&mut rng, 4) as f64;
                    let r = below(&mut rng, 4) as f64;
                    let centre = |k: f64| (k - 1.5) / 1.5;
                    (a.cos() * b + centre(q), a.sin() * b + centre(r))
                }
                Toy2dKind::EightGaussians => {
                    let k = below(&mut rng, 8) as f64;
                    let (gx, gy) = normal_pair(&mut rng);
                    let a = k * PI / 4.0;
                    (a.cos() + noise * gx, a.sin() + noise * gy)
                }
            };
            [x as f32, y as f32]
        })
        .collect()
}

/// The spiral's centre curve at parameter `u` ∈ [0, 1], as (angle, radius).
fn spiral_polar(u: f64) -> (f64, f64) {
    (3.0 * PI * u, 0.325 + 0.65 * u)
}

/// The centre curve as a fine polyline (4096 segments; chord error < 1e-6).
fn spiral_polyline() -> &'static [(f64, f64)] {
    static LINE: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    LINE.get_or_init(|| {
        const SEGMENTS: usize = 4096;
        (0..=SEGMENTS)
            .map(|i| {
                let (theta, rho) = spiral_polar(i as f64 / SEGMENTS as f64);
                (rho * theta.cos(), rho * theta.sin())
            })
            .collect()
    })
}

/// Euclidean distance from `point` to the spiral's centre curve. Training points with spread
/// `noise` lie within `noise / 2` of it (0.075 by default); use it to score samples.
pub fn spiral_distance(point: [f32; 2]) -> f32 {
    let (px, py) = (point[0] as f64, point[1] as f64);
    let line = spiral_polyline();
    let mut best = f64::INFINITY;
    for pair in line.windows(2) {
        let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
        let (dx, dy) = (bx - ax, by - ay);
        let t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
        let (ex, ey) = (ax + t * dx - px, ay + t * dy - py);
        best = best.min(ex * ex + ey * ey);
    }
    best.sqrt() as f32
}

/// A materialised 2-D point cloud.
#[derive(Debug)]
pub struct Toy2dDataset {
    kind: Toy2dKind,
    seed: u64,
    noise: f32,
    points: Vec<[f32; 2]>,
}

impl Toy2dDataset {
    /// Sample the config's points for an experiment seed (the points depend on
    /// `seed + seed_offset`).
    pub fn new(config: &DataConfig, seed: u64) -> Self {
        let c = &config.toy2d;
        let seed = seed.wrapping_add(c.seed_offset);
        let noise = c.noise_or_default();
        let n = limited(c.num_points, config.limit);
        Self {
            kind: c.dataset,
            seed,
            noise,
            points: sample_toy2d_with_noise(c.dataset, n, seed, noise),
        }
    }

    /// All points.
    pub fn points(&self) -> &[[f32; 2]] {
        &self.points
    }
}

impl Dataset for Toy2dDataset {
    fn len(&self) -> usize {
        self.points.len()
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let p = self.points.get(index).ok_or(DataError::OutOfRange {
            index,
            len: self.points.len(),
        })?;
        Ok(Example {
            data: p.to_vec(),
            class: None,
            labels: None,
            cond: None,
        })
    }

    fn shape(&self) -> Vec<i64> {
        vec![2]
    }

    fn num_classes(&self) -> Option<i64> {
        None
    }

    fn label_dim(&self) -> Option<i64> {
        None
    }

    fn cond_shape(&self) -> Option<Vec<i64>> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "toy2d {} (seed {}, noise {}): {} points, [2]",
            self.kind.name(),
            self.seed,
            self.noise,
            self.points.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_zero_on_the_curve_and_grows_off_it() {
        for u in [0.0, 0.1, 0.37, 0.9, 1.0] {
            let (t, r) = spiral_polar(u);
            let d = spiral_distance([(r * t.cos()) as f32, (r * t.sin()) as f32]);
            assert!(d < 1e-5, "{u} {d}");
        }
        // The origin is 0.325 from the curve's start.
        assert!((spiral_distance([0.0, 0.0]) - 0.325).abs() < 1e-3);
    }

    #[test]
    fn prefix_property() {
        for kind in [
            Toy2dKind::Spiral,
            Toy2dKind::DiscGrid,
            Toy2dKind::EightGaussians,
        ] {
            let long = sample_toy2d(kind, 50, 7);
            assert_eq!(&long[..20], &sample_toy2d(kind, 20, 7)[..]);
        }
    }
}
