//! The `degradation:` config section and the factory that builds an operator from it.

use serde::{Deserialize, Serialize};
use tch::Device;

use super::{Fade, GaussianBlur, GaussianMask, GaussianNoise, Pixelate};
use crate::{Degradation, Schedule, ScheduleError};

/// Which cold-diffusion degradation to use, with its parameters.
///
/// Every parameter has a default, so `{kind: blur}` alone is a complete config. `steps` is the
/// number of levels T of the deterministic degradations (the noise one uses the schedule's T).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DegradationConfig {
    /// Gaussian noise following the config's noise schedule (the seed's only degradation).
    Noise {},
    /// Gaussian blur with σ_t = `sigma_max` · √(t/T) ([`GaussianBlur`]).
    Blur {
        /// Number of levels T (default 40).
        #[serde(default = "default_blur_steps")]
        steps: i64,
        /// Blur width σ_T in pixels at the last level (default 3, heavy blur for 32 px images).
        #[serde(default = "default_sigma_max")]
        sigma_max: f64,
    },
    /// Linear fade to the constant `fill` ([`Fade`]).
    Fade {
        /// Number of levels T (default 50).
        #[serde(default = "default_steps")]
        steps: i64,
        /// The constant reached at T (default 0, mid grey for data in [−1, 1]).
        #[serde(default)]
        fill: f64,
    },
    /// Gaussian inpainting mask growing from the image centre ([`GaussianMask`]).
    Mask {
        /// Number of levels T (default 50).
        #[serde(default = "default_steps")]
        steps: i64,
        /// Width β_T in pixels of the last mask factor (default 4; the hole grows to ≈ 2·width
        /// with the default T).
        #[serde(default = "default_mask_width")]
        width: f64,
        /// Value of masked pixels (default 0).
        #[serde(default)]
        fill: f64,
    },
    /// Area downsampling then nearest upsampling, down to `min_size` pixels ([`Pixelate`]).
    Pixelate {
        /// Number of levels T (default 8: 32 px shrinks through 25, 19, 15, 11, 9, 7, 5 to 4).
        #[serde(default = "default_pixelate_steps")]
        steps: i64,
        /// Side length in pixels of the pooled image at T (default 4).
        #[serde(default = "default_min_size")]
        min_size: i64,
    },
}

fn default_steps() -> i64 {
    50
}
fn default_blur_steps() -> i64 {
    40
}
fn default_sigma_max() -> f64 {
    3.0
}
fn default_mask_width() -> f64 {
    4.0
}
fn default_pixelate_steps() -> i64 {
    8
}
fn default_min_size() -> i64 {
    4
}

impl DegradationConfig {
    /// The degradation's name, as in [`Degradation::name`].
    pub fn name(&self) -> &'static str {
        match self {
            Self::Noise {} => "noise",
            Self::Blur { .. } => "blur",
            Self::Fade { .. } => "fade",
            Self::Mask { .. } => "mask",
            Self::Pixelate { .. } => "pixelate",
        }
    }

    /// Build the operator, validating its parameters (errors name the key, e.g.
    /// `degradation.sigma_max`). `schedule` drives the noise degradation; others ignore it, and
    /// build their (tiny) tables per call on the input's device, so `device` only matters for noise.
    pub fn build(
        &self,
        schedule: &dyn Schedule,
        device: Device,
    ) -> Result<Box<dyn Degradation>, ScheduleError> {
        Ok(match *self {
            Self::Noise {} => Box::new(GaussianNoise::new(schedule, device)),
            Self::Blur { steps, sigma_max } => Box::new(GaussianBlur::new(steps, sigma_max)?),
            Self::Fade { steps, fill } => Box::new(Fade::new(steps, fill)?),
            Self::Mask { steps, width, fill } => Box::new(GaussianMask::new(steps, width, fill)?),
            Self::Pixelate { steps, min_size } => Box::new(Pixelate::new(steps, min_size)?),
        })
    }
}
