//! Gaussian blur whose width grows with the level (Bansal et al. 2022, §4.1).

use tch::Tensor;

use super::host_levels;
use crate::{Degradation, ScheduleError};

/// D(x₀, t) = G_{σ_t} ∗ x₀, a separable Gaussian blur with σ_t = σ_max · √(t/T) (pixels).
///
/// Bansal et al. 2022 ("Cold Diffusion", §4.1) blur by applying a sequence of Gaussian kernels.
/// Gaussians compose by adding variances, so t repeated blurs of width σ_max/√T are one blur of
/// width σ_max·√(t/T): that is the growth used here, from σ₀ = 0 (exact identity) to
/// σ_T = `sigma_max`. (A σ linear in t would leave the first levels indistinguishable from the
/// identity: a Gaussian of width < 0.2 px is a delta in practice.)
///
/// The 1-D kernel of a sample is k(j) ∝ exp(−j²/(2σ_t²)) for |j| ≤ r_t = ⌈3σ_t⌉, zero beyond,
/// normalised to sum 1 (σ_t = 0 gives the delta kernel). The radius is capped at `size − 1` per
/// axis so that reflect padding fits the image; reflect padding keeps borders from darkening and
/// a constant image constant. The blur is a depthwise convolution over `[1, B·C, H, W]` with one
/// kernel per (sample, channel), so samples in a batch may have different levels; it is
/// differentiable in x₀. Levels outside [0, T] are clamped.
#[derive(Debug, Clone)]
pub struct GaussianBlur {
    steps: i64,
    sigma_max: f64,
}

impl GaussianBlur {
    /// A blur with `steps` levels reaching width `sigma_max` (pixels) at the last one.
    pub fn new(steps: i64, sigma_max: f64) -> Result<Self, ScheduleError> {
        if steps < 1 {
            return Err(ScheduleError::invalid(
                "degradation.steps",
                steps,
                "must be >= 1",
            ));
        }
        if !(sigma_max > 0.0 && sigma_max.is_finite()) {
            return Err(ScheduleError::invalid(
                "degradation.sigma_max",
                sigma_max,
                "must be finite and > 0",
            ));
        }
        Ok(Self { steps, sigma_max })
    }

    /// σ_t in pixels for a level in [0, T].
    pub fn sigma(&self, level: i64) -> f64 {
        self.sigma_max * (level.clamp(0, self.steps) as f64 / self.steps as f64).sqrt()
    }
}

/// Kernel radius for width `sigma` on an axis of `size` pixels.
fn radius(sigma: f64, size: i64) -> i64 {
    ((3.0 * sigma).ceil() as i64).min(size - 1).max(0)
}

/// One normalised 1-D kernel of length 2·`rmax`+1 per (sample, channel), flattened row-major
/// into `[B·C, 2·rmax+1]` order.
fn kernels(sigmas: &[f64], channels: i64, size: i64, rmax: i64) -> Vec<f64> {
    let len = (2 * rmax + 1) as usize;
    let mut out = Vec::with_capacity(sigmas.len() * channels as usize * len);
    for &sigma in sigmas {
        let r = radius(sigma, size);
        let mut k: Vec<f64> = (-rmax..=rmax)
            .map(|j| match (j.abs() <= r, r == 0) {
                (false, _) => 0.0,
                (true, true) => 1.0,
                (true, false) => (-((j * j) as f64) / (2.0 * sigma * sigma)).exp(),
            })
            .collect();
        let sum: f64 = k.iter().sum();
        k.iter_mut().for_each(|v| *v /= sum);
        for _ in 0..channels {
            out.extend_from_slice(&k);
        }
    }
    out
}

impl Degradation for GaussianBlur {
    fn name(&self) -> &'static str {
        "blur"
    }

    fn num_steps(&self) -> i64 {
        self.steps
    }

    fn degrade(&self, x0: &Tensor, t: &Tensor, _noise: Option<&Tensor>) -> Tensor {
        let (b, c, h, w) = x0.size4().expect("blur expects x0 of shape [B, C, H, W]");
        let sigmas: Vec<f64> = host_levels(t, self.steps)
            .into_iter()
            .map(|l| self.sigma(l))
            .collect();
        let rmax = |size: i64| sigmas.iter().map(|&s| radius(s, size)).max().unwrap_or(0);
        let (rh, rw) = (rmax(h), rmax(w));
        if x0.numel() == 0 || (rh == 0 && rw == 0) {
            return x0.copy();
        }
        let groups = b * c;
        let options = (x0.kind(), x0.device());
        let weight = |size: i64, r: i64, shape: [i64; 4]| {
            Tensor::from_slice(&kernels(&sigmas, c, size, r))
                .to_kind(options.0)
                .to_device(options.1)
                .reshape(shape)
        };
        let mut x = x0.reshape([1, groups, h, w]);
        if rw > 0 {
            let k = weight(w, rw, [groups, 1, 1, 2 * rw + 1]);
            x = x.reflection_pad2d([rw, rw, 0, 0]).conv2d(
                &k,
                None::<Tensor>,
                [1, 1],
                [0, 0],
                [1, 1],
                groups,
            );
        }
        if rh > 0 {
            let k = weight(h, rh, [groups, 1, 2 * rh + 1, 1]);
            x = x.reflection_pad2d([0, 0, rh, rh]).conv2d(
                &k,
                None::<Tensor>,
                [1, 1],
                [0, 0],
                [1, 1],
                groups,
            );
        }
        x.reshape([b, c, h, w])
    }
}
