//! DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), over all T steps or a strided subset.
//!
//! x_{t'} = μ̃(x_t, x̂₀) + σ z with μ̃ the posterior mean of q(x_{t'} | x_t, x₀) and σ² either
//! the posterior variance β̃ (`fixed_small`) or β (`fixed_large`). No noise is added on the last
//! step.

use difflab_schedulers::posterior::Posterior;
use difflab_schedulers::{
    Prediction, Schedule, TimestepSpacing, VarianceType, inference_timesteps,
};
use tch::Tensor;

use crate::sampler::run_loop;
use crate::{
    Conditioning, Denoiser, NoiseSource, SampleError, Sampler, StepInfo, StepOutput, X0Processing,
};

/// One DDPM step from ᾱ_t to ᾱ_{t'} (`alpha_bar_prev` = 1 past the end). `noise` is added with
/// standard deviation σ when given (callers pass `None` on the final step).
#[allow(clippy::too_many_arguments)]
pub fn ddpm_step(
    prediction: Prediction,
    model_output: &Tensor,
    x_t: &Tensor,
    alpha_bar: f64,
    alpha_bar_prev: f64,
    variance: VarianceType,
    x0_processing: X0Processing,
    noise: Option<&Tensor>,
) -> StepOutput {
    let (x0, _) = prediction.split(model_output, x_t, alpha_bar);
    let x0 = x0_processing.apply(x0);
    let post = Posterior::new(alpha_bar, alpha_bar_prev);
    let mut prev = &x0 * post.coef_x0 + x_t * post.coef_xt;
    if let Some(z) = noise {
        prev += z * post.sigma2(variance).sqrt();
    }
    StepOutput {
        prev_sample: prev,
        pred_x0: x0,
    }
}

/// The DDPM ancestral sampler.
#[derive(Clone, Debug)]
pub struct DdpmSampler {
    timesteps: Vec<i64>,
    alpha_bars: Vec<f64>,
    variance: VarianceType,
    x0_processing: X0Processing,
}

impl DdpmSampler {
    /// All T steps when `steps` is `None` (the usual DDPM), else `steps` timesteps by `spacing`.
    pub fn new(
        schedule: &dyn Schedule,
        steps: Option<usize>,
        spacing: TimestepSpacing,
        steps_offset: usize,
        variance: VarianceType,
        x0_processing: X0Processing,
    ) -> Result<Self, SampleError> {
        let t = schedule.num_train_timesteps();
        let timesteps = inference_timesteps(t, steps.unwrap_or(t), spacing, steps_offset)?;
        let alpha_bars = timesteps
            .iter()
            .map(|&t| schedule.alpha_bar(t as usize))
            .collect();
        Ok(Self {
            timesteps,
            alpha_bars,
            variance,
            x0_processing,
        })
    }
}

impl Sampler for DdpmSampler {
    fn name(&self) -> &'static str {
        "ddpm"
    }

    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn sample(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor,
        cond: &Conditioning,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(&StepInfo<'_>),
    ) -> Result<Tensor, SampleError> {
        let prediction = denoiser.prediction();
        let last = self.timesteps.len() - 1;
        run_loop(
            self.name(),
            &self.timesteps,
            denoiser,
            x,
            cond,
            |i, out, x| {
                let prev_ab = self.alpha_bars.get(i + 1).copied().unwrap_or(1.0);
                let z = (i < last).then(|| noise.draw(&x.size(), x.kind(), x.device()));
                ddpm_step(
                    prediction,
                    out,
                    x,
                    self.alpha_bars[i],
                    prev_ab,
                    self.variance,
                    self.x0_processing,
                    z.as_ref(),
                )
            },
            on_step,
        )
    }
}
