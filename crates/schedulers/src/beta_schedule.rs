//! Beta schedules β_1..β_T and their YAML configuration.

use serde::{Deserialize, Serialize};

use crate::{NoiseSchedule, ScheduleError};

/// Which beta schedule to use (names follow diffusers' `beta_schedule`, with `cosine` for
/// `squaredcos_cap_v2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaScheduleKind {
    /// β linear in t from `beta_start` to `beta_end` (Ho et al. 2020).
    #[default]
    Linear,
    /// √β linear in t, squared (latent diffusion / Stable Diffusion).
    ScaledLinear,
    /// ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β clipped at `max_beta`
    /// (Nichol & Dhariwal 2021; diffusers `squaredcos_cap_v2`).
    #[serde(alias = "squaredcos_cap_v2")]
    Cosine,
    /// β = sigmoid(linspace(-6, 6, T)) · (β_end − β_start) + β_start (GeoDiff; diffusers `sigmoid`).
    Sigmoid,
}

/// The most training timesteps a discrete schedule may have (DDPM uses 1000; continuous-time
/// models do not use this table).
pub const MAX_TIMESTEPS: usize = 1_000_000;

impl BetaScheduleKind {
    /// All kinds, in documentation order.
    pub const ALL: [BetaScheduleKind; 4] = [
        Self::Linear,
        Self::ScaledLinear,
        Self::Cosine,
        Self::Sigmoid,
    ];

    /// The YAML / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::ScaledLinear => "scaled_linear",
            Self::Cosine => "cosine",
            Self::Sigmoid => "sigmoid",
        }
    }

    /// Default (β_start, β_end) for the kinds that use them.
    pub fn default_betas(self) -> (f64, f64) {
        match self {
            Self::ScaledLinear => (0.00085, 0.012),
            _ => (1e-4, 0.02),
        }
    }
}

impl std::str::FromStr for BetaScheduleKind {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            "cosine" | "squaredcos_cap_v2" => Ok(Self::Cosine),
            "sigmoid" => Ok(Self::Sigmoid),
            _ => Err(ScheduleError::invalid(
                "schedule.kind",
                s,
                "expected one of linear, scaled_linear, cosine, sigmoid",
            )),
        }
    }
}

/// The `schedule:` section of a config: a flat mapping so that `--set schedule.kind=cosine`
/// works on any config. Keys that do not apply to the chosen kind are ignored (e.g.
/// `beta_start` for `cosine`), so switching kinds in a sweep needs one override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Beta schedule kind.
    #[serde(default)]
    pub kind: BetaScheduleKind,
    /// Number of training timesteps T.
    #[serde(default = "default_timesteps")]
    pub timesteps: usize,
    /// β_1 for linear / scaled_linear / sigmoid (default per kind, see [`BetaScheduleKind::default_betas`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// β_T for linear / scaled_linear / sigmoid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// Offset s of the cosine schedule.
    #[serde(default = "default_cosine_s")]
    pub cosine_s: f64,
    /// Upper clip for cosine betas.
    #[serde(default = "default_max_beta")]
    pub max_beta: f64,
    /// Rescale so that ᾱ_T = 0 exactly (Lin et al. 2023, "Common Diffusion Noise Schedules and
    /// Sample Steps are Flawed", Alg. 1). Pair with v-prediction and trailing spacing.
    #[serde(default)]
    pub zero_terminal_snr: bool,
}

fn default_timesteps() -> usize {
    1000
}
fn default_cosine_s() -> f64 {
    0.008
}
fn default_max_beta() -> f64 {
    0.999
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self::new(BetaScheduleKind::Linear, default_timesteps())
    }
}

impl ScheduleConfig {
    /// A config of `kind` with `timesteps` steps and every other key at its default.
    pub fn new(kind: BetaScheduleKind, timesteps: usize) -> Self {
        Self {
            kind,
            timesteps,
            beta_start: None,
            beta_end: None,
            cosine_s: default_cosine_s(),
            max_beta: default_max_beta(),
            zero_terminal_snr: false,
        }
    }

    /// (β_start, β_end) after applying the per-kind defaults.
    pub fn beta_range(&self) -> (f64, f64) {
        let (s, e) = self.kind.default_betas();
        (self.beta_start.unwrap_or(s), self.beta_end.unwrap_or(e))
    }

    /// The betas β_1..β_T (index 0 is the first diffusion step), validated.
    pub fn betas(&self) -> Result<Vec<f64>, ScheduleError> {
        let t = self.timesteps;
        if !(2..=MAX_TIMESTEPS).contains(&t) {
            return Err(ScheduleError::invalid(
                "schedule.timesteps",
                t,
                format!("must be in 2..={MAX_TIMESTEPS}"),
            ));
        }
        let betas = match self.kind {
            BetaScheduleKind::Cosine => {
                if !(self.cosine_s > 0.0 && self.cosine_s.is_finite()) {
                    return Err(ScheduleError::invalid(
                        "schedule.cosine_s",
                        self.cosine_s,
                        "must be > 0",
                    ));
                }
                if !(self.max_beta > 0.0 && self.max_beta < 1.0) {
                    return Err(ScheduleError::invalid(
                        "schedule.max_beta",
                        self.max_beta,
                        "must be in (0, 1)",
                    ));
                }
                cosine_betas(t, self.cosine_s, self.max_beta)
            }
            kind => {
                let (b0, b1) = self.beta_range();
                if !(b0 > 0.0 && b0 < 1.0) {
                    return Err(ScheduleError::invalid(
                        "schedule.beta_start",
                        b0,
                        "must be in (0, 1)",
                    ));
                }
                if !(b1 >= b0 && b1 < 1.0) {
                    return Err(ScheduleError::invalid(
                        "schedule.beta_end",
                        b1,
                        format!("must be in [beta_start = {b0}, 1)"),
                    ));
                }
                match kind {
                    BetaScheduleKind::Linear => linspace(b0, b1, t),
                    BetaScheduleKind::ScaledLinear => linspace(b0.sqrt(), b1.sqrt(), t)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                    BetaScheduleKind::Sigmoid => linspace(-6.0, 6.0, t)
                        .into_iter()
                        .map(|x| b0 + (b1 - b0) / (1.0 + (-x).exp()))
                        .collect(),
                    BetaScheduleKind::Cosine => unreachable!("handled above"),
                }
            }
        };
        Ok(betas)
    }

    /// Build the schedule tables.
    pub fn build(&self) -> Result<NoiseSchedule, ScheduleError> {
        let betas = self.betas()?;
        let schedule = NoiseSchedule::from_betas(betas)?;
        Ok(if self.zero_terminal_snr {
            schedule.rescaled_zero_terminal_snr()
        } else {
            schedule
        })
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy/torch `linspace`).
pub(crate) fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { b } else { a + step * i as f64 })
        .collect()
}

/// Cosine schedule betas: β_i = min(1 − ᾱ(i+1)/ᾱ(i), max_beta) with
/// ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17). ᾱ is *recomputed*
/// from the clipped betas by [`NoiseSchedule::from_betas`] (the seed implementation did not).
fn cosine_betas(t: usize, s: f64, max_beta: f64) -> Vec<f64> {
    let f = |x: f64| {
        ((x + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| {
            let t1 = i as f64 / t as f64;
            let t2 = (i + 1) as f64 / t as f64;
            (1.0 - f(t2) / f(t1)).min(max_beta)
        })
        .collect()
}
