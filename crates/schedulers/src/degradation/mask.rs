//! Gaussian inpainting mask growing from the image centre (Bansal et al. 2022, §4.2).

use tch::{Device, Kind, Tensor};

use super::clamped_levels;
use crate::{Degradation, ScheduleError};

/// D(x₀, t) = m_t ⊙ x₀ + (1 − m_t) · fill with the centred Gaussian mask
///
/// m_t(r) = ∏_{i=1..t} (1 − exp(−r² / (2 β_i²))),  β_i = `width` · √(i/T) (pixels),
///
/// r the distance of a pixel to the centre pixel (⌊H/2⌋, ⌊W/2⌋) (Bansal et al. 2022, "Cold
/// Diffusion", §4.2, inpainting). m_0 = 1 (identity); each further level multiplies in a factor
/// in [0, 1) that is 0 at the centre, so the hole widens monotonically with t and the centre pixel
/// equals `fill` for every t ≥ 1. β_i² grows linearly in i (as the variance of the blur does), so
/// that even level 1 masks more than the centre pixel (β_1 = width/√T). Because T factors are
/// multiplied, the final hole is larger than `width`: with the defaults (T = 50, width = 4)
/// m_T ≈ 0.13 at r = 8 px, ≈ 0.6 at r = 10 px and ≈ 0.9 at r = 12 px.
///
/// The mask tables `[T+1, H, W]` are computed per call on x₀'s device (no host round trip) and
/// gathered per sample, so a batch may mix levels; levels outside [0, T] are clamped. Works on
/// `[B, C, H, W]` tensors and is differentiable in x₀.
#[derive(Debug, Clone)]
pub struct GaussianMask {
    steps: i64,
    width: f64,
    fill: f64,
}

impl GaussianMask {
    /// A mask with `steps` levels, last Gaussian width `width` pixels, masked pixels set to `fill`.
    pub fn new(steps: i64, width: f64, fill: f64) -> Result<Self, ScheduleError> {
        if steps < 1 {
            return Err(ScheduleError::invalid(
                "degradation.steps",
                steps,
                "must be >= 1",
            ));
        }
        if !(width > 0.0 && width.is_finite()) {
            return Err(ScheduleError::invalid(
                "degradation.width",
                width,
                "must be finite and > 0",
            ));
        }
        if !fill.is_finite() {
            return Err(ScheduleError::invalid(
                "degradation.fill",
                fill,
                "must be finite",
            ));
        }
        Ok(Self { steps, width, fill })
    }

    /// The masks m_0..m_T for an `h`×`w` image, shape `[T+1, h, w]` (f32 on `device`).
    pub fn masks(&self, h: i64, w: i64, device: Device) -> Tensor {
        let opts = (Kind::Float, device);
        let ys = Tensor::arange(h, opts) - (h / 2) as f64;
        let xs = Tensor::arange(w, opts) - (w / 2) as f64;
        let r2 = ys.square().reshape([1, h, 1]) + xs.square().reshape([1, 1, w]);
        // 2β_i² = 2 · width² · i/T
        let two_beta2 = (Tensor::arange_start(1, self.steps + 1, opts)
            * (2.0 * self.width * self.width / self.steps as f64))
            .reshape([self.steps, 1, 1]);
        let factors: Tensor = 1.0 - (-(r2 / two_beta2)).exp();
        Tensor::cat(
            &[Tensor::ones([1, h, w], opts), factors.cumprod(0, None)],
            0,
        )
    }
}

impl Degradation for GaussianMask {
    fn name(&self) -> &'static str {
        "mask"
    }

    fn num_steps(&self) -> i64 {
        self.steps
    }

    fn degrade(&self, x0: &Tensor, t: &Tensor, _noise: Option<&Tensor>) -> Tensor {
        let (_, _, h, w) = x0.size4().expect("mask expects x0 of shape [B, C, H, W]");
        let device = x0.device();
        let m = self
            .masks(h, w, device)
            .index_select(0, &clamped_levels(t, self.steps, device))
            .unsqueeze(1)
            .to_kind(x0.kind());
        x0 * &m + (1.0 - m) * self.fill
    }
}
