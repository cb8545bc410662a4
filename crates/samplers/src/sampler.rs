//! The sampler trait and what a step reports.

use tch::Tensor;

use crate::{Conditioning, Denoiser, NoiseSource, SampleError, shared_timestep};

/// What one step produced: the new sample and the x₀ it was built from.
pub struct StepOutput {
    /// x at the next (lower) timestep.
    pub prev_sample: Tensor,
    /// The (processed) predicted x₀ used by the update.
    pub pred_x0: Tensor,
}

/// Passed to the step callback after every step: for progress bars and trajectory strips.
pub struct StepInfo<'a> {
    /// 0-based step index.
    pub index: usize,
    /// Number of steps in this run.
    pub total: usize,
    /// The timestep (or cold level) the model was evaluated at.
    pub t: i64,
    /// The sample after this step.
    pub x: &'a Tensor,
    /// The predicted x₀ at this step.
    pub pred_x0: &'a Tensor,
}

/// A reverse process: from x_T (given) to x₀.
pub trait Sampler {
    /// A short name (`ddpm`, `ddim`, `cold`).
    fn name(&self) -> &'static str;

    /// The timesteps (or cold levels) at which the denoiser is evaluated, in order.
    fn timesteps(&self) -> &[i64];

    /// Run the reverse process from `x` under `no_grad`, calling `on_step` after each step.
    /// Stochastic steps draw from `noise`. Fails if the result is not finite.
    fn sample(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor,
        cond: &Conditioning,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(&StepInfo<'_>),
    ) -> Result<Tensor, SampleError>;
}

/// `t` as an int64 `[B]` tensor on `x`'s device: one element broadcast (stride 0), which tells
/// the networks that every example shares the timestep, so they embed it once (see
/// [`shared_timestep`]).
pub(crate) fn timestep_batch(t: i64, x: &Tensor) -> Tensor {
    shared_timestep(t, x.size()[0], x.device())
}

/// The shared loop: evaluate, step, report; then check the result is finite.
pub(crate) fn run_loop(
    name: &'static str,
    timesteps: &[i64],
    denoiser: &dyn Denoiser,
    mut x: Tensor,
    cond: &Conditioning,
    mut step: impl FnMut(usize, &Tensor, &Tensor) -> StepOutput,
    on_step: &mut dyn FnMut(&StepInfo<'_>),
) -> Result<Tensor, SampleError> {
    let _guard = tch::no_grad_guard();
    let total = timesteps.len();
    for (index, &t) in timesteps.iter().enumerate() {
        let out = denoiser.forward(&x, &timestep_batch(t, &x), cond);
        let StepOutput {
            prev_sample,
            pred_x0,
        } = step(index, &out, &x);
        x = prev_sample;
        on_step(&StepInfo {
            index,
            total,
            t,
            x: &x,
            pred_x0: &pred_x0,
        });
    }
    let finite = x.isfinite().all().int64_value(&[]) != 0;
    if finite {
        Ok(x)
    } else {
        Err(SampleError::NonFinite {
            sampler: name,
            steps: total,
        })
    }
}
