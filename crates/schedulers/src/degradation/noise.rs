//! The Gaussian-noise degradation, which makes cold diffusion equal to DDIM (η = 0).

use tch::{Device, Tensor};

use super::clamped_levels;
use crate::{Degradation, ForwardProcess, Schedule};

/// D(x₀, t) = √ᾱ'_t x₀ + √(1−ᾱ'_t) z with ᾱ'_0 = 1 and ᾱ'_t = ᾱ_{t−1} of the noise schedule
/// (cold levels are 1-based so that level 0 is the identity). Levels outside [0, T] are clamped.
#[derive(Debug)]
pub struct GaussianNoise {
    forward: ForwardProcess,
    steps: i64,
}

impl GaussianNoise {
    /// The degradation for a noise schedule, with its tables on `device`.
    pub fn new(schedule: &dyn Schedule, device: Device) -> Self {
        let levels = ColdLevels { inner: schedule };
        Self {
            forward: ForwardProcess::new(&levels, device),
            steps: schedule.num_train_timesteps() as i64,
        }
    }
}

/// ᾱ over cold levels 0..=T: 1 at level 0, then the schedule's ᾱ_0..ᾱ_{T−1}.
struct ColdLevels<'a> {
    inner: &'a dyn Schedule,
}

impl Schedule for ColdLevels<'_> {
    fn num_train_timesteps(&self) -> usize {
        self.inner.num_train_timesteps() + 1
    }
    fn alpha_bar(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.inner.alpha_bar(t - 1)
        }
    }
}

impl Degradation for GaussianNoise {
    fn name(&self) -> &'static str {
        "noise"
    }

    fn num_steps(&self) -> i64 {
        self.steps
    }

    fn degrade(&self, x0: &Tensor, t: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let t = clamped_levels(t, self.steps, t.device());
        let (a, s) = self.forward.coefficients(&t, x0);
        match noise {
            Some(z) => x0 * &a + z * &s,
            None => x0 * &a,
        }
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn implied_noise(&self, x_t: &Tensor, x0: &Tensor, t: &Tensor) -> Option<Tensor> {
        let t = clamped_levels(t, self.steps, t.device());
        let (a, s) = self.forward.coefficients(&t, x0);
        Some((x_t - x0 * &a) / s.clamp_min(crate::prediction::MIN_SQRT_ONE_MINUS_ALPHA_BAR))
    }
}
