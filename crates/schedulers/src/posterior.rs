//! The DDPM posterior q(x_{t'} | x_t, x₀) between two visited timesteps t' < t.
//!
//! With ᾱ = ᾱ_t, ᾱ' = ᾱ_{t'}, α = ᾱ/ᾱ' and β = 1 − α (one DDPM step, or a strided one):
//! mean = √ᾱ' β/(1−ᾱ) · x₀ + √α (1−ᾱ')/(1−ᾱ) · x_t, variance β̃ = (1−ᾱ')/(1−ᾱ) · β
//! (Ho et al. 2020, eqs. 6–7).

use serde::{Deserialize, Serialize};

/// The reverse-process variance σ_t² of DDPM ancestral sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ² = β̃_t, the posterior variance (lower bound; diffusers `fixed_small`).
    #[default]
    FixedSmall,
    /// σ² = β_t (upper bound; diffusers `fixed_large`).
    FixedLarge,
}

impl std::str::FromStr for VarianceType {
    type Err = crate::ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed_small" => Ok(Self::FixedSmall),
            "fixed_large" => Ok(Self::FixedLarge),
            _ => Err(crate::ScheduleError::invalid(
                "variance",
                s,
                "expected fixed_small or fixed_large",
            )),
        }
    }
}

/// Coefficients of one posterior step from ᾱ_t to ᾱ_{t'}.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Posterior {
    /// Multiplies x₀ in the mean.
    pub coef_x0: f64,
    /// Multiplies x_t in the mean.
    pub coef_xt: f64,
    /// β̃, the posterior variance.
    pub variance: f64,
    /// β = 1 − ᾱ_t/ᾱ_{t'}, the forward variance of this (possibly strided) step.
    pub beta: f64,
}

/// Smallest variance used (diffusers clamps at 1e-20 so that √ and log stay finite).
pub const MIN_VARIANCE: f64 = 1e-20;

/// α = ᾱ_t / ᾱ_{t'} of one (possibly strided) step, rounded to f32 as an f32 pipeline
/// computes it. β = 1 − α then suffers the same cancellation as in diffusers (near t = 0,
/// β ≈ 1e-4 is known to ~1e-3 relative from f32 ᾱ tables either way); matching the rounding
/// keeps steps equal to diffusers' to ~1e-7.
pub fn step_alpha(alpha_bar: f64, alpha_bar_prev: f64) -> f64 {
    (alpha_bar / alpha_bar_prev) as f32 as f64
}

impl Posterior {
    /// The posterior between ᾱ_t = `alpha_bar` and ᾱ_{t'} = `alpha_bar_prev` (1.0 past the end).
    pub fn new(alpha_bar: f64, alpha_bar_prev: f64) -> Self {
        let alpha = step_alpha(alpha_bar, alpha_bar_prev);
        let beta = 1.0 - alpha;
        let one_minus = (1.0 - alpha_bar).max(MIN_VARIANCE);
        Self {
            coef_x0: alpha_bar_prev.sqrt() * beta / one_minus,
            coef_xt: alpha.sqrt() * (1.0 - alpha_bar_prev) / one_minus,
            variance: ((1.0 - alpha_bar_prev) / one_minus * beta).max(MIN_VARIANCE),
            beta,
        }
    }

    /// σ² for the given variance type.
    pub fn sigma2(&self, variance: VarianceType) -> f64 {
        match variance {
            VarianceType::FixedSmall => self.variance,
            VarianceType::FixedLarge => self.beta,
        }
    }
}
