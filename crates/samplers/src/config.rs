//! The `sampler:` config section, mirroring YAML one to one, and the factory built on it.

use difflab_schedulers::{Degradation, Schedule, ScheduleError, TimestepSpacing, VarianceType};
use serde::{Deserialize, Serialize};

use crate::{
    ColdAlgorithm, ColdSampler, DdimSampler, DdpmSampler, SampleError, Sampler, X0Processing,
};

/// Which sampler to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDPM ancestral sampling.
    Ddpm,
    /// DDIM (η ≥ 0).
    #[default]
    Ddim,
    /// Cold Diffusion (needs a degradation).
    Cold,
}

impl std::str::FromStr for SamplerKind {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            "cold" => Ok(Self::Cold),
            _ => Err(ScheduleError::invalid(
                "sampler.kind",
                s,
                "expected one of ddpm, ddim, cold",
            )),
        }
    }
}

/// Sampler settings. Flat, with diffusers' names where they exist, so any key can be swept with
/// `--set sampler.KEY=VALUE`; keys that do not apply to `kind` are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// ddpm | ddim | cold.
    #[serde(default)]
    pub kind: SamplerKind,
    /// Number of denoiser evaluations. Default: T for ddpm and cold, 50 for ddim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// DDIM η (0 = deterministic).
    #[serde(default)]
    pub eta: f64,
    /// Timestep spacing for ddim (and strided ddpm).
    #[serde(default)]
    pub spacing: TimestepSpacing,
    /// Added to leading-spaced timesteps (Stable Diffusion uses 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM: the last step goes to ᾱ = 1 (true) or ᾱ_0 (false).
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    /// DDPM variance: fixed_small | fixed_large.
    #[serde(default)]
    pub variance: VarianceType,
    /// Clamp the predicted x₀ to [−clip_sample_range, clip_sample_range].
    #[serde(default = "yes")]
    pub clip_sample: bool,
    /// Half-width of the clamp.
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    /// Dynamic thresholding of x₀ (Imagen); takes precedence over `clip_sample`.
    #[serde(default)]
    pub thresholding: bool,
    /// Quantile used by dynamic thresholding.
    #[serde(default = "default_ratio")]
    pub dynamic_thresholding_ratio: f64,
    /// Upper bound of the dynamic threshold.
    #[serde(default = "one")]
    pub sample_max_value: f64,
    /// Cold Diffusion algorithm: 1 or 2.
    #[serde(default)]
    pub cold_algorithm: ColdAlgorithm,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_ratio() -> f64 {
    0.995
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::new(SamplerKind::Ddim)
    }
}

impl SamplerConfig {
    /// A config of `kind` with every other key at its default.
    pub fn new(kind: SamplerKind) -> Self {
        Self {
            kind,
            steps: None,
            eta: 0.0,
            spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
            variance: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: default_ratio(),
            sample_max_value: 1.0,
            cold_algorithm: ColdAlgorithm::Improved,
        }
    }

    /// The x₀ post-processing these settings ask for, validated.
    pub fn x0_processing(&self) -> Result<X0Processing, ScheduleError> {
        if self.thresholding {
            let r = self.dynamic_thresholding_ratio;
            if !(r > 0.0 && r <= 1.0) {
                return Err(ScheduleError::invalid(
                    "sampler.dynamic_thresholding_ratio",
                    r,
                    "must be in (0, 1]",
                ));
            }
            if self.sample_max_value.is_nan() || self.sample_max_value < 1.0 {
                return Err(ScheduleError::invalid(
                    "sampler.sample_max_value",
                    self.sample_max_value,
                    "must be >= 1",
                ));
            }
            Ok(X0Processing::DynamicThreshold {
                ratio: r,
                max_value: self.sample_max_value,
            })
        } else if self.clip_sample {
            if self.clip_sample_range.is_nan() || self.clip_sample_range <= 0.0 {
                return Err(ScheduleError::invalid(
                    "sampler.clip_sample_range",
                    self.clip_sample_range,
                    "must be > 0",
                ));
            }
            Ok(X0Processing::Clip {
                range: self.clip_sample_range,
            })
        } else {
            Ok(X0Processing::None)
        }
    }

    /// Build the sampler. `degradation` is required for `cold` and ignored otherwise.
    pub fn build(
        &self,
        schedule: &dyn Schedule,
        degradation: Option<Box<dyn Degradation>>,
    ) -> Result<Box<dyn Sampler>, SampleError> {
        let x0 = self.x0_processing()?;
        Ok(match self.kind {
            SamplerKind::Ddpm => Box::new(DdpmSampler::new(
                schedule,
                self.steps,
                self.spacing,
                self.steps_offset,
                self.variance,
                x0,
            )?),
            SamplerKind::Ddim => Box::new(DdimSampler::new(
                schedule,
                self.steps.unwrap_or(50.min(schedule.num_train_timesteps())),
                self.spacing,
                self.steps_offset,
                self.set_alpha_to_one,
                self.eta,
                x0,
            )?),
            SamplerKind::Cold => {
                let d = degradation.ok_or(SampleError::MissingDegradation)?;
                Box::new(ColdSampler::new(d, self.steps, self.cold_algorithm, x0)?)
            }
        })
    }
}
