//! Fade to a constant colour.

use tch::Tensor;

use super::clamped_levels;
use crate::forward::broadcast_shape;
use crate::{Degradation, ScheduleError};

/// D(x₀, t) = (1 − t/T) · x₀ + (t/T) · fill: a linear fade from the image to the constant
/// `fill` (0 is mid grey for data in [−1, 1]).
///
/// A simple member of the cold-diffusion family (Bansal et al. 2022): at T every image is the
/// same constant, so sampling starts from a fixed point. Works on any `[B, …]` tensor, is
/// differentiable in x₀, and clamps levels outside [0, T].
#[derive(Debug, Clone)]
pub struct Fade {
    steps: i64,
    fill: f64,
}

impl Fade {
    /// A fade with `steps` levels towards the constant `fill`.
    pub fn new(steps: i64, fill: f64) -> Result<Self, ScheduleError> {
        if steps < 1 {
            return Err(ScheduleError::invalid(
                "degradation.steps",
                steps,
                "must be >= 1",
            ));
        }
        if !fill.is_finite() {
            return Err(ScheduleError::invalid(
                "degradation.fill",
                fill,
                "must be finite",
            ));
        }
        Ok(Self { steps, fill })
    }
}

impl Degradation for Fade {
    fn name(&self) -> &'static str {
        "fade"
    }

    fn num_steps(&self) -> i64 {
        self.steps
    }

    fn degrade(&self, x0: &Tensor, t: &Tensor, _noise: Option<&Tensor>) -> Tensor {
        let a = (clamped_levels(t, self.steps, x0.device()).to_kind(x0.kind()) / self.steps as f64)
            .reshape(&broadcast_shape(t, x0)[..]);
        x0 * (1.0 - &a) + a * self.fill
    }
}
