//! The discrete noise schedule: ᾱ_t tables and quantities derived from them.

use serde::Serialize;

use crate::ScheduleError;

/// A discrete-time variance-preserving noise schedule, seen through ᾱ_t.
///
/// Timesteps are 0-based as in diffusers: t ∈ [0, T), and x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε with
/// ᾱ_t = ∏_{i≤t} (1 − β_i). Samplers only need this view, so any schedule that can answer
/// `alpha_bar(t)` can drive them.
pub trait Schedule {
    /// T, the number of training timesteps.
    fn num_train_timesteps(&self) -> usize;

    /// ᾱ_t for t ∈ [0, T).
    fn alpha_bar(&self, t: usize) -> f64;

    /// Signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021).
    fn snr(&self, t: usize) -> f64 {
        let a = self.alpha_bar(t);
        a / (1.0 - a)
    }
}

/// Beta, alpha and ᾱ tables of length T.
///
/// Values are held as f64 but *rounded to f32 precision* the way an f32 PyTorch pipeline
/// (diffusers) computes them: β rounded to f32, α = f32(1 − β), ᾱ accumulated in f64 (as
/// `torch.cumprod` does on CPU) and rounded to f32. Networks see f32 anyway, and near t = 0,
/// where 1 − ᾱ_t ≈ 1e-4, one f32 ulp of ᾱ changes 1 − ᾱ by ~1e-4 relative: matching the
/// rounding makes sampler steps agree with diffusers to ~1e-7 instead of ~1e-4.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseSchedule {
    /// β_t.
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t = ∏_{i≤t} α_i.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Tables from betas; every β must lie in (0, 1].
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        if betas.len() < 2 {
            return Err(ScheduleError::invalid(
                "schedule.timesteps",
                betas.len(),
                "need at least 2",
            ));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b <= 1.0))
        {
            return Err(ScheduleError::invalid(
                "schedule.betas",
                format!("beta[{i}] = {b}"),
                "every beta must be in (0, 1]",
            ));
        }
        let betas: Vec<f64> = betas.into_iter().map(to_f32_precision).collect();
        let alphas: Vec<f64> = betas.iter().map(|b| to_f32_precision(1.0 - b)).collect();
        let alphas_cumprod = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(to_f32_precision(*acc))
            })
            .collect();
        Ok(Self {
            betas,
            alphas,
            alphas_cumprod,
        })
    }

    /// Rescale to zero terminal SNR (Lin et al. 2023, Algorithm 1): shift and scale √ᾱ so that
    /// √ᾱ_0 is kept and √ᾱ_{T−1} = 0, then recompute α and β from the new ᾱ.
    pub fn rescaled_zero_terminal_snr(&self) -> Self {
        let sqrt_ab: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let first = sqrt_ab[0];
        let last = *sqrt_ab.last().expect("non-empty");
        let alphas_cumprod: Vec<f64> = sqrt_ab
            .iter()
            .map(|s| {
                let r = (s - last) * first / (first - last);
                to_f32_precision(r * r)
            })
            .collect();
        let alphas: Vec<f64> = std::iter::once(alphas_cumprod[0])
            .chain(alphas_cumprod.windows(2).map(|w| w[1] / w[0]))
            .collect();
        let betas = alphas.iter().map(|a| 1.0 - a).collect();
        Self {
            betas,
            alphas,
            alphas_cumprod,
        }
    }

    /// SNR(t) for every t.
    pub fn snr_table(&self) -> Vec<f64> {
        (0..self.num_train_timesteps())
            .map(|t| self.snr(t))
            .collect()
    }

    /// ᾱ as f32 values, the form network-facing tensors use.
    pub fn alphas_cumprod_f32(&self) -> Vec<f32> {
        self.alphas_cumprod.iter().map(|&a| a as f32).collect()
    }
}

/// `x` rounded to the nearest f32.
fn to_f32_precision(x: f64) -> f64 {
    x as f32 as f64
}

impl Schedule for NoiseSchedule {
    fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }
    fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }
}
