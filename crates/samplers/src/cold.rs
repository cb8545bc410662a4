//! Cold Diffusion sampling (Bansal et al. 2022, Algorithms 1 and 2) over any [`Degradation`].
//!
//! The restoration network R predicts x₀ from x_t at level t. From level t to level t' < t:
//! - Algorithm 1 (naive): x_{t'} = D(R(x_t, t), t').
//! - Algorithm 2 (improved): x_{t'} = x_t − D(x̂₀, t) + D(x̂₀, t'), which cancels R's error to
//!   first order and is what makes deterministic degradations invertible.
//!
//! For the Gaussian-noise degradation, Algorithm 2 keeps the noise realisation implied by
//! (x_t, x̂₀) and is then exactly DDIM with η = 0; Algorithm 1 redraws it.

use difflab_schedulers::{Degradation, Prediction, ScheduleError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::sampler::run_loop;
use crate::{
    Conditioning, Denoiser, NoiseSource, SampleError, Sampler, StepInfo, StepOutput, X0Processing,
};

/// Which of Bansal et al.'s sampling algorithms to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColdAlgorithm {
    /// Algorithm 1: x_{t'} = D(x̂₀, t').
    #[serde(rename = "1")]
    Naive,
    /// Algorithm 2: x_{t'} = x_t − D(x̂₀, t) + D(x̂₀, t').
    #[default]
    #[serde(rename = "2")]
    Improved,
}

/// `steps` + 1 descending levels from T to 0 (T, …, 0), evenly spaced and rounded.
pub fn cold_levels(num_levels: i64, steps: usize) -> Result<Vec<i64>, ScheduleError> {
    if steps == 0 || steps as i64 > num_levels {
        return Err(ScheduleError::invalid(
            "sampler.steps",
            steps,
            format!("must be in [1, {num_levels}] (the degradation's levels)"),
        ));
    }
    let n = steps as f64;
    Ok((0..=steps)
        .map(|i| (num_levels as f64 * (n - i as f64) / n).round() as i64)
        .collect())
}

/// One cold step from level `t` to `t_prev` given the predicted x̂₀. `fresh_noise` is used by
/// Algorithm 1 with a stochastic degradation.
pub fn cold_step(
    degradation: &dyn Degradation,
    algorithm: ColdAlgorithm,
    x_t: &Tensor,
    pred_x0: Tensor,
    t: i64,
    t_prev: i64,
    fresh_noise: Option<&Tensor>,
) -> StepOutput {
    let b = x_t.size()[0];
    let level = |l: i64| crate::shared_timestep(l, b, x_t.device());
    let (t, t_prev) = (level(t), level(t_prev));
    let prev = match algorithm {
        ColdAlgorithm::Naive => degradation.degrade(&pred_x0, &t_prev, fresh_noise),
        ColdAlgorithm::Improved => {
            let z = degradation.implied_noise(x_t, &pred_x0, &t);
            x_t - degradation.degrade(&pred_x0, &t, z.as_ref())
                + degradation.degrade(&pred_x0, &t_prev, z.as_ref())
        }
    };
    StepOutput {
        prev_sample: prev,
        pred_x0,
    }
}

/// The cold-diffusion sampler.
pub struct ColdSampler {
    degradation: Box<dyn Degradation>,
    levels: Vec<i64>,
    algorithm: ColdAlgorithm,
    x0_processing: X0Processing,
}

impl ColdSampler {
    /// Sample over `steps` steps (default: every level) of `degradation`.
    pub fn new(
        degradation: Box<dyn Degradation>,
        steps: Option<usize>,
        algorithm: ColdAlgorithm,
        x0_processing: X0Processing,
    ) -> Result<Self, SampleError> {
        let n = degradation.num_steps();
        let levels = cold_levels(n, steps.unwrap_or(n as usize))?;
        Ok(Self {
            degradation,
            levels,
            algorithm,
            x0_processing,
        })
    }

    /// The degradation this sampler inverts.
    pub fn degradation(&self) -> &dyn Degradation {
        self.degradation.as_ref()
    }
}

impl Sampler for ColdSampler {
    fn name(&self) -> &'static str {
        "cold"
    }

    fn timesteps(&self) -> &[i64] {
        &self.levels[..self.levels.len() - 1]
    }

    fn sample(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor,
        cond: &Conditioning,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(&StepInfo<'_>),
    ) -> Result<Tensor, SampleError> {
        if denoiser.prediction() != Prediction::X0 {
            return Err(SampleError::Prediction {
                sampler: "cold",
                needed: Prediction::X0,
                got: denoiser.prediction(),
            });
        }
        let stochastic = self.algorithm == ColdAlgorithm::Naive && self.degradation.is_stochastic();
        run_loop(
            self.name(),
            self.timesteps(),
            denoiser,
            x,
            cond,
            |i, out, x| {
                let pred_x0 = self.x0_processing.apply(out.shallow_clone());
                let (t, t_prev) = (self.levels[i], self.levels[i + 1]);
                let z =
                    (stochastic && t_prev > 0).then(|| noise.draw(&x.size(), x.kind(), x.device()));
                cold_step(
                    self.degradation.as_ref(),
                    self.algorithm,
                    x,
                    pred_x0,
                    t,
                    t_prev,
                    z.as_ref(),
                )
            },
            on_step,
        )
    }
}
