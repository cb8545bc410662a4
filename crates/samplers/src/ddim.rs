//! DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12).
//!
//! x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,
//! σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}).
//! η = 0 is the deterministic DDIM ODE sampler; η = 1 matches DDPM's posterior variance.

use difflab_schedulers::posterior::step_alpha;
use difflab_schedulers::{Prediction, Schedule, TimestepSpacing, inference_timesteps};
use tch::Tensor;

use crate::sampler::run_loop;
use crate::{
    Conditioning, Denoiser, NoiseSource, SampleError, Sampler, StepInfo, StepOutput, X0Processing,
};

/// One DDIM step from ᾱ_t to ᾱ_{t'} given the network output. `noise` is used only when
/// η > 0 (and must then be given). ε̂ is taken from the raw output, not re-derived from the
/// clipped x̂₀ (diffusers' default, `use_clipped_model_output = False`).
#[allow(clippy::too_many_arguments)]
pub fn ddim_step(
    prediction: Prediction,
    model_output: &Tensor,
    x_t: &Tensor,
    alpha_bar: f64,
    alpha_bar_prev: f64,
    eta: f64,
    x0_processing: X0Processing,
    noise: Option<&Tensor>,
) -> StepOutput {
    let (x0, eps) = prediction.split(model_output, x_t, alpha_bar);
    let x0 = x0_processing.apply(x0);
    let variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar).max(f64::MIN_POSITIVE)
        * (1.0 - step_alpha(alpha_bar, alpha_bar_prev));
    let sigma = eta * variance.max(0.0).sqrt();
    let direction = (1.0 - alpha_bar_prev - sigma * sigma).max(0.0).sqrt();
    let mut prev = &x0 * alpha_bar_prev.sqrt() + eps * direction;
    if sigma > 0.0 {
        let z = noise.expect("ddim_step with eta > 0 needs noise");
        prev += z * sigma;
    }
    StepOutput {
        prev_sample: prev,
        pred_x0: x0,
    }
}

/// The DDIM sampler over a fixed list of timesteps.
#[derive(Clone, Debug)]
pub struct DdimSampler {
    timesteps: Vec<i64>,
    alpha_bars: Vec<f64>,
    final_alpha_bar: f64,
    eta: f64,
    x0_processing: X0Processing,
}

impl DdimSampler {
    /// `steps` timesteps laid out by `spacing`; the step after the last visited timestep goes
    /// to ᾱ = 1 when `set_alpha_to_one`, else to ᾱ_0 (diffusers semantics). Each step goes to
    /// the next *visited* timestep (diffusers uses t − ⌊T/N⌋, which differs for `linspace`).
    pub fn new(
        schedule: &dyn Schedule,
        steps: usize,
        spacing: TimestepSpacing,
        steps_offset: usize,
        set_alpha_to_one: bool,
        eta: f64,
        x0_processing: X0Processing,
    ) -> Result<Self, SampleError> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(difflab_schedulers::ScheduleError::invalid(
                "sampler.eta",
                eta,
                "must be >= 0",
            )
            .into());
        }
        let timesteps =
            inference_timesteps(schedule.num_train_timesteps(), steps, spacing, steps_offset)?;
        Ok(Self::from_timesteps(
            schedule,
            timesteps,
            set_alpha_to_one,
            eta,
            x0_processing,
        ))
    }

    /// A sampler over explicit, strictly descending timesteps.
    pub fn from_timesteps(
        schedule: &dyn Schedule,
        timesteps: Vec<i64>,
        set_alpha_to_one: bool,
        eta: f64,
        x0_processing: X0Processing,
    ) -> Self {
        let alpha_bars = timesteps
            .iter()
            .map(|&t| schedule.alpha_bar(t as usize))
            .collect();
        let final_alpha_bar = if set_alpha_to_one {
            1.0
        } else {
            schedule.alpha_bar(0)
        };
        Self {
            timesteps,
            alpha_bars,
            final_alpha_bar,
            eta,
            x0_processing,
        }
    }

    fn alpha_bar_prev(&self, index: usize) -> f64 {
        self.alpha_bars
            .get(index + 1)
            .copied()
            .unwrap_or(self.final_alpha_bar)
    }
}

impl Sampler for DdimSampler {
    fn name(&self) -> &'static str {
        "ddim"
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
        run_loop(
            self.name(),
            &self.timesteps,
            denoiser,
            x,
            cond,
            |i, out, x| {
                let z = (self.eta > 0.0).then(|| noise.draw(&x.size(), x.kind(), x.device()));
                ddim_step(
                    prediction,
                    out,
                    x,
                    self.alpha_bars[i],
                    self.alpha_bar_prev(i),
                    self.eta,
                    self.x0_processing,
                    z.as_ref(),
                )
            },
            on_step,
        )
    }
}
