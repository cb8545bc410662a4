//! What a network predicts, and conversions between ε, x₀ and v.
//!
//! With x_t = a·x₀ + s·ε, where a = √ᾱ_t and s = √(1−ᾱ_t):
//! - ε-prediction (Ho et al. 2020): x₀ = (x_t − s·ε)/a.
//! - x₀-prediction: ε = (x_t − a·x₀)/s.
//! - v-prediction (Salimans & Ho 2022, "Progressive Distillation", §4): v = a·ε − s·x₀, so
//!   x₀ = a·x_t − s·v and ε = s·x_t + a·v.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::Coef;

/// Smallest √ᾱ used as a divisor when recovering x₀ from an ε-prediction. At ᾱ_T ≈ 0
/// (cosine schedule's last step, or exactly 0 with zero-terminal-SNR) the division would give
/// inf/NaN; with the floor the result stays finite and clipping/thresholding can act on it.
pub const MIN_SQRT_ALPHA_BAR: f64 = 1e-6;
/// Smallest √(1−ᾱ) used as a divisor when recovering ε from an x₀-prediction (ᾱ_0 → 1).
pub const MIN_SQRT_ONE_MINUS_ALPHA_BAR: f64 = 1e-6;

/// The quantity a network is trained to output (the `objective` key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise ε (diffusers `epsilon`).
    #[default]
    #[serde(alias = "epsilon")]
    Eps,
    /// The clean sample x₀ (diffusers `sample`).
    #[serde(alias = "sample")]
    X0,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x₀ (diffusers `v_prediction`).
    #[serde(alias = "v_prediction")]
    V,
}

impl std::str::FromStr for Prediction {
    type Err = crate::ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eps" | "epsilon" => Ok(Self::Eps),
            "x0" | "sample" => Ok(Self::X0),
            "v" | "v_prediction" => Ok(Self::V),
            _ => Err(crate::ScheduleError::invalid(
                "objective",
                s,
                "expected one of eps, x0, v",
            )),
        }
    }
}

impl Prediction {
    /// The training target for this prediction type given x₀, the noise ε and the coefficients
    /// a = √ᾱ_t, s = √(1−ᾱ_t).
    pub fn target<C: Coef>(self, x0: &Tensor, noise: &Tensor, a: C, s: C) -> Tensor {
        match self {
            Self::Eps => noise.shallow_clone(),
            Self::X0 => x0.shallow_clone(),
            Self::V => a.mul(noise) - s.mul(x0),
        }
    }

    /// x₀ implied by a network output at x_t.
    pub fn to_x0<C: Coef>(self, out: &Tensor, x_t: &Tensor, a: C, s: C, a_floor: C) -> Tensor {
        match self {
            Self::Eps => a_floor.div(&(x_t - s.mul(out))),
            Self::X0 => out.shallow_clone(),
            Self::V => a.mul(x_t) - s.mul(out),
        }
    }

    /// ε implied by a network output at x_t.
    pub fn to_eps<C: Coef>(self, out: &Tensor, x_t: &Tensor, a: C, s: C, s_floor: C) -> Tensor {
        match self {
            Self::Eps => out.shallow_clone(),
            Self::X0 => s_floor.div(&(x_t - a.mul(out))),
            Self::V => s.mul(x_t) + a.mul(out),
        }
    }

    /// Both x₀ and ε for a batch that shares one ᾱ (samplers), with the divisor floors applied.
    pub fn split(self, out: &Tensor, x_t: &Tensor, alpha_bar: f64) -> (Tensor, Tensor) {
        let a = alpha_bar.sqrt();
        let s = (1.0 - alpha_bar).max(0.0).sqrt();
        let x0 = self.to_x0(out, x_t, a, s, a.max(MIN_SQRT_ALPHA_BAR));
        let eps = self.to_eps(out, x_t, a, s, s.max(MIN_SQRT_ONE_MINUS_ALPHA_BAR));
        (x0, eps)
    }
}
