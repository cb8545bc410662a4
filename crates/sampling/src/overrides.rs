//! Per-stage sampler settings that override a run's `sampler:` section, from a cascade
//! manifest or from `difflab sample` flags.

use difflab_samplers::{SamplerConfig, SamplerKind};
use difflab_schedulers::TimestepSpacing;
use serde::{Deserialize, Serialize};

/// The sampler keys a manifest stage (or a command-line flag) may change; unset keys keep the
/// run's value.
///
/// ```yaml
/// sampler: {kind: ddim, steps: 50, eta: 0.0, spacing: trailing, steps_offset: 0, clip_sample: true}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerOverrides {
    /// `ddpm`, `ddim` or `cold`.
    #[serde(default)]
    pub kind: Option<SamplerKind>,
    /// Denoiser evaluations.
    #[serde(default)]
    pub steps: Option<usize>,
    /// DDIM η.
    #[serde(default)]
    pub eta: Option<f64>,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default)]
    pub spacing: Option<TimestepSpacing>,
    /// Added to leading-spaced timesteps.
    #[serde(default)]
    pub steps_offset: Option<usize>,
    /// Clamp the predicted x₀ to the clip range.
    #[serde(default)]
    pub clip_sample: Option<bool>,
}

impl SamplerOverrides {
    /// `base` with every set key replaced.
    pub fn apply(&self, base: &SamplerConfig) -> SamplerConfig {
        let mut c = base.clone();
        if let Some(kind) = self.kind {
            c.kind = kind;
        }
        if self.steps.is_some() {
            c.steps = self.steps;
        }
        if let Some(eta) = self.eta {
            c.eta = eta;
        }
        if let Some(spacing) = self.spacing {
            c.spacing = spacing;
        }
        if let Some(offset) = self.steps_offset {
            c.steps_offset = offset;
        }
        if let Some(clip) = self.clip_sample {
            c.clip_sample = clip;
        }
        c
    }

    /// `self` with the keys set in `later` replacing its own (command line over manifest).
    pub fn then(&self, later: &Self) -> Self {
        Self {
            kind: later.kind.or(self.kind),
            steps: later.steps.or(self.steps),
            eta: later.eta.or(self.eta),
            spacing: later.spacing.or(self.spacing),
            steps_offset: later.steps_offset.or(self.steps_offset),
            clip_sample: later.clip_sample.or(self.clip_sample),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_keys_keep_the_runs_value_and_later_overrides_win() {
        let base = SamplerConfig {
            steps: Some(100),
            eta: 1.0,
            ..SamplerConfig::new(SamplerKind::Ddpm)
        };
        let manifest = SamplerOverrides {
            kind: Some(SamplerKind::Ddim),
            steps: Some(20),
            ..Default::default()
        };
        let cli = SamplerOverrides {
            steps: Some(10),
            ..Default::default()
        };
        let c = manifest.then(&cli).apply(&base);
        assert_eq!(c.kind, SamplerKind::Ddim);
        assert_eq!(c.steps, Some(10));
        assert_eq!(c.eta, 1.0);
        assert_eq!(c.spacing, base.spacing);
    }
}
