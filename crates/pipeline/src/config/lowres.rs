//! `training.lowres_noise`: the noise-conditioning augmentation levels of a super-resolution
//! stage (Ho et al. 2022, "Cascaded Diffusion Models", §4.2).

use serde::{Deserialize, Serialize};

/// The `training.lowres_noise` section of an SR stage's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LowresNoiseConfig {
    /// Training levels are drawn uniformly from `[0, train_max]`.
    pub train_max: f64,
    /// The level used at sampling unless the cascade manifest or `--noise-level` says otherwise
    /// (imagen-pytorch's default is 0.2).
    pub sample: f64,
}

impl Default for LowresNoiseConfig {
    fn default() -> Self {
        Self {
            train_max: 0.5,
            sample: 0.2,
        }
    }
}

impl LowresNoiseConfig {
    /// Range checks naming the key: `0 <= sample <= train_max <= 1`.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.train_max) {
            return Err(format!(
                "invalid training.lowres_noise.train_max = {}: must be in [0, 1]",
                self.train_max
            ));
        }
        check_sample_level(self.sample, self.train_max).map_err(|e| {
            format!(
                "invalid training.lowres_noise.sample = {}: {e}",
                self.sample
            )
        })
    }
}

/// A sampling level must lie in the range the stage was trained on.
pub fn check_sample_level(level: f64, train_max: f64) -> Result<(), String> {
    if !(0.0..=train_max).contains(&level) {
        return Err(format!(
            "the stage was trained with levels in [0, {train_max}] (training.lowres_noise.train_max)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_level_must_lie_in_the_trained_range() {
        assert!(LowresNoiseConfig::default().validate().is_ok());
        let bad = LowresNoiseConfig {
            train_max: 0.1,
            sample: 0.2,
        };
        let e = bad.validate().unwrap_err();
        assert!(
            e.contains("lowres_noise.sample") && e.contains("[0, 0.1]"),
            "{e}"
        );
    }
}
