//! The `sampler:` config section, one variant per sampler with only the keys that apply to it,
//! and the factory built on it.
//!
//! ```yaml
//! sampler: {kind: ddim, steps: 50, eta: 0.0, spacing: trailing}
//! ```
//!
//! A section is read through [`SamplerKeys`], so a key set for a sampler that does not use it
//! (`eta` under `kind: ddpm`) is an error naming the key, its value and the sampler. A section
//! without `kind` is `ddim`.

use std::fmt;

use difflab_schedulers::{Degradation, Schedule, ScheduleError, TimestepSpacing, VarianceType};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    ColdAlgorithm, ColdSampler, DdimSampler, DdpmSampler, InapplicableKey, SampleError, Sampler,
    SamplerKeys, X0Processing,
};

/// Which sampler to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// The x₀ keys, which every sampler takes.
macro_rules! with_x0_keys {
    ($($key:literal),*) => {
        &[
            $($key,)*
            "clip_sample",
            "clip_sample_range",
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
        ]
    };
}

impl SamplerKind {
    /// Every sampler.
    pub const ALL: [Self; 3] = [Self::Ddpm, Self::Ddim, Self::Cold];

    /// Its name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::Cold => "cold",
        }
    }

    /// The keys a `sampler:` section of this kind may set besides `kind`, in the order they are
    /// written.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Ddpm => with_x0_keys!("steps", "spacing", "steps_offset", "variance"),
            Self::Ddim => with_x0_keys!(
                "steps",
                "eta",
                "spacing",
                "steps_offset",
                "set_alpha_to_one"
            ),
            Self::Cold => with_x0_keys!("steps", "cold_algorithm"),
        }
    }

    /// Whether `key` (a `sampler:` key other than `kind`) applies to this sampler.
    pub fn takes(self, key: &str) -> bool {
        self.keys().contains(&key)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ScheduleError::invalid("sampler.kind", s, "expected one of ddpm, ddim, cold")
            })
    }
}

/// What every sampler does to its predicted x₀ (diffusers' names), before it is used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct X0Config {
    /// Clamp the predicted x₀ to [−clip_sample_range, clip_sample_range]. Default: true.
    pub clip_sample: bool,
    /// Half-width of the clamp. Default: 1.
    pub clip_sample_range: f64,
    /// Dynamic thresholding of x₀ (Imagen); takes precedence over `clip_sample`. Default:
    /// false.
    pub thresholding: bool,
    /// Quantile used by dynamic thresholding. Default: 0.995.
    pub dynamic_thresholding_ratio: f64,
    /// Upper bound of the dynamic threshold. Default: 1.
    pub sample_max_value: f64,
}

impl Default for X0Config {
    fn default() -> Self {
        Self {
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
        }
    }
}

impl X0Config {
    /// The x₀ post-processing these settings ask for, validated.
    pub fn processing(&self) -> Result<X0Processing, ScheduleError> {
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

    /// These settings as keys.
    fn keys(&self) -> SamplerKeys {
        let Self {
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        } = *self;
        SamplerKeys {
            clip_sample: Some(clip_sample),
            clip_sample_range: Some(clip_sample_range),
            thresholding: Some(thresholding),
            dynamic_thresholding_ratio: Some(dynamic_thresholding_ratio),
            sample_max_value: Some(sample_max_value),
            ..SamplerKeys::default()
        }
    }

    /// The x₀ keys set in `keys` over the defaults.
    fn from_keys(keys: &SamplerKeys) -> Self {
        let d = Self::default();
        Self {
            clip_sample: keys.clip_sample.unwrap_or(d.clip_sample),
            clip_sample_range: keys.clip_sample_range.unwrap_or(d.clip_sample_range),
            thresholding: keys.thresholding.unwrap_or(d.thresholding),
            dynamic_thresholding_ratio: keys
                .dynamic_thresholding_ratio
                .unwrap_or(d.dynamic_thresholding_ratio),
            sample_max_value: keys.sample_max_value.unwrap_or(d.sample_max_value),
        }
    }
}

/// `kind: ddpm`: ancestral sampling (Ho et al. 2020), on every timestep or a strided subset.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DdpmConfig {
    /// Denoiser evaluations. Default (`None`): all T.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Timestep spacing of a strided run. Default: leading.
    pub spacing: TimestepSpacing,
    /// Added to leading-spaced timesteps. Default: 0.
    pub steps_offset: usize,
    /// fixed_small (default) or fixed_large.
    pub variance: VarianceType,
    /// x₀ post-processing.
    #[serde(flatten)]
    pub x0: X0Config,
}

/// `kind: ddim`: DDIM (Song et al. 2021), deterministic at η = 0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DdimConfig {
    /// Denoiser evaluations. Default (`None`): 50, or T when T < 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// η (0 = deterministic, 1 = DDPM's variance). Default: 0.
    pub eta: f64,
    /// Timestep spacing. Default: leading.
    pub spacing: TimestepSpacing,
    /// Added to leading-spaced timesteps (Stable Diffusion uses 1). Default: 0.
    pub steps_offset: usize,
    /// The step after the last visited timestep goes to ᾱ = 1 (true, the default) or ᾱ_0.
    pub set_alpha_to_one: bool,
    /// x₀ post-processing.
    #[serde(flatten)]
    pub x0: X0Config,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            steps: None,
            eta: 0.0,
            spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
            x0: X0Config::default(),
        }
    }
}

/// `kind: cold`: Cold Diffusion (Bansal et al. 2022), inverting the run's degradation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ColdConfig {
    /// Denoiser evaluations. Default (`None`): every level of the degradation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Algorithm 1 or 2 (default).
    pub cold_algorithm: ColdAlgorithm,
    /// x₀ post-processing.
    #[serde(flatten)]
    pub x0: X0Config,
}

/// The `sampler:` section: which sampler, with the settings that apply to it (diffusers' names
/// where they exist). Written as one mapping tagged by `kind`; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerConfig {
    /// DDPM ancestral sampling.
    Ddpm(DdpmConfig),
    /// DDIM.
    Ddim(DdimConfig),
    /// Cold Diffusion.
    Cold(ColdConfig),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::new(SamplerKind::Ddim)
    }
}

impl<'de> Deserialize<'de> for SamplerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let keys = SamplerKeys::read(deserializer, Some(SamplerKind::default()))?;
        Self::from_keys(&keys).map_err(serde::de::Error::custom)
    }
}

impl SamplerConfig {
    /// A config of `kind` with every other key at its default.
    pub fn new(kind: SamplerKind) -> Self {
        match kind {
            SamplerKind::Ddpm => Self::Ddpm(DdpmConfig::default()),
            SamplerKind::Ddim => Self::Ddim(DdimConfig::default()),
            SamplerKind::Cold => Self::Cold(ColdConfig::default()),
        }
    }

    /// Which sampler.
    pub fn kind(&self) -> SamplerKind {
        match self {
            Self::Ddpm(_) => SamplerKind::Ddpm,
            Self::Ddim(_) => SamplerKind::Ddim,
            Self::Cold(_) => SamplerKind::Cold,
        }
    }

    /// Denoiser evaluations as set (`None`: the sampler's default).
    pub fn steps(&self) -> Option<usize> {
        match self {
            Self::Ddpm(c) => c.steps,
            Self::Ddim(c) => c.steps,
            Self::Cold(c) => c.steps,
        }
    }

    /// DDIM η; `None` for the samplers without one.
    pub fn eta(&self) -> Option<f64> {
        match self {
            Self::Ddim(c) => Some(c.eta),
            Self::Ddpm(_) | Self::Cold(_) => None,
        }
    }

    /// Timestep spacing; `None` for cold, which steps over the degradation's levels.
    pub fn spacing(&self) -> Option<TimestepSpacing> {
        match self {
            Self::Ddpm(c) => Some(c.spacing),
            Self::Ddim(c) => Some(c.spacing),
            Self::Cold(_) => None,
        }
    }

    /// The x₀ settings.
    pub fn x0(&self) -> &X0Config {
        match self {
            Self::Ddpm(c) => &c.x0,
            Self::Ddim(c) => &c.x0,
            Self::Cold(c) => &c.x0,
        }
    }

    /// The x₀ post-processing these settings ask for, validated.
    pub fn x0_processing(&self) -> Result<X0Processing, ScheduleError> {
        self.x0().processing()
    }

    /// Every key of this config, set (`steps` only when set).
    pub fn keys(&self) -> SamplerKeys {
        match self.clone() {
            Self::Ddpm(DdpmConfig {
                steps,
                spacing,
                steps_offset,
                variance,
                x0,
            }) => SamplerKeys {
                kind: Some(SamplerKind::Ddpm),
                steps,
                spacing: Some(spacing),
                steps_offset: Some(steps_offset),
                variance: Some(variance),
                ..x0.keys()
            },
            Self::Ddim(DdimConfig {
                steps,
                eta,
                spacing,
                steps_offset,
                set_alpha_to_one,
                x0,
            }) => SamplerKeys {
                kind: Some(SamplerKind::Ddim),
                steps,
                eta: Some(eta),
                spacing: Some(spacing),
                steps_offset: Some(steps_offset),
                set_alpha_to_one: Some(set_alpha_to_one),
                ..x0.keys()
            },
            Self::Cold(ColdConfig {
                steps,
                cold_algorithm,
                x0,
            }) => SamplerKeys {
                kind: Some(SamplerKind::Cold),
                steps,
                cold_algorithm: Some(cold_algorithm),
                ..x0.keys()
            },
        }
    }

    /// The config `keys` describe: their `kind` (default `ddim`), the keys set, defaults for
    /// the rest. A key set that the sampler does not take is an error naming it.
    pub fn from_keys(keys: &SamplerKeys) -> Result<Self, InapplicableKey> {
        let kind = keys.kind.unwrap_or_default();
        keys.check(kind).map_err(|e| InapplicableKey {
            kind_defaulted: keys.kind.is_none(),
            ..e
        })?;
        let x0 = X0Config::from_keys(keys);
        Ok(match kind {
            SamplerKind::Ddpm => {
                let d = DdpmConfig::default();
                Self::Ddpm(DdpmConfig {
                    steps: keys.steps,
                    spacing: keys.spacing.unwrap_or(d.spacing),
                    steps_offset: keys.steps_offset.unwrap_or(d.steps_offset),
                    variance: keys.variance.unwrap_or(d.variance),
                    x0,
                })
            }
            SamplerKind::Ddim => {
                let d = DdimConfig::default();
                Self::Ddim(DdimConfig {
                    steps: keys.steps,
                    eta: keys.eta.unwrap_or(d.eta),
                    spacing: keys.spacing.unwrap_or(d.spacing),
                    steps_offset: keys.steps_offset.unwrap_or(d.steps_offset),
                    set_alpha_to_one: keys.set_alpha_to_one.unwrap_or(d.set_alpha_to_one),
                    x0,
                })
            }
            SamplerKind::Cold => {
                let d = ColdConfig::default();
                Self::Cold(ColdConfig {
                    steps: keys.steps,
                    cold_algorithm: keys.cold_algorithm.unwrap_or(d.cold_algorithm),
                    x0,
                })
            }
        })
    }

    /// This config with `changes` applied. A `kind` other than this config's switches sampler:
    /// the keys the new one takes keep their values, the others are dropped and its own keys
    /// start at their defaults. Every other key set in `changes` replaces this config's value,
    /// and must apply to the resulting sampler (`eta` cannot be set for ddpm).
    pub fn apply(&self, changes: &SamplerKeys) -> Result<Self, InapplicableKey> {
        let mut keys = self.keys();
        if let Some(kind) = changes.kind
            && kind != self.kind()
        {
            keys.retain_for(kind);
        }
        Self::from_keys(&keys.then(changes))
    }

    /// This config switched to `kind`, keeping the keys that `kind` takes (see
    /// [`apply`](Self::apply)).
    pub fn with_kind(&self, kind: SamplerKind) -> Self {
        let mut keys = self.keys();
        keys.retain_for(kind);
        keys.kind = Some(kind);
        Self::from_keys(&keys).expect("only keys that apply to the kind are left")
    }

    /// Build the sampler. `degradation` is required for `cold` and ignored otherwise.
    pub fn build(
        &self,
        schedule: &dyn Schedule,
        degradation: Option<Box<dyn Degradation>>,
    ) -> Result<Box<dyn Sampler>, SampleError> {
        let x0 = self.x0_processing()?;
        Ok(match self {
            Self::Ddpm(c) => Box::new(DdpmSampler::new(
                schedule,
                c.steps,
                c.spacing,
                c.steps_offset,
                c.variance,
                x0,
            )?),
            Self::Ddim(c) => Box::new(DdimSampler::new(
                schedule,
                c.steps.unwrap_or(50.min(schedule.num_train_timesteps())),
                c.spacing,
                c.steps_offset,
                c.set_alpha_to_one,
                c.eta,
                x0,
            )?),
            Self::Cold(c) => {
                let d = degradation.ok_or(SampleError::MissingDegradation)?;
                Box::new(ColdSampler::new(d, c.steps, c.cold_algorithm, x0)?)
            }
        })
    }
}
