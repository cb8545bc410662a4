//! The training step in difflab's CPU kernels: the same stages and results as
//! [`super::LibtorchEngine`], with fewer passes over memory.
//!
//! - The MLP trains through its hand-written forward and backward pass
//!   ([`difflab_models::MlpTape`]) with the loss's output gradient written out in one pass
//!   ([`super::RegressionLoss::value_and_grad`]); every other network through autograd.
//! - The clipping norm is summed in difflab's pass (for the taped MLP, partly inside its
//!   backward pass), and the clipping factor left to the update.
//! - The update is one pass per parameter: the clipping factor, AdamW, zeroing the gradient and
//!   the EMA ([`crate::optim::AdamW::step_clip_zero_ema`]). For the taped MLP it skips the zeroing: its
//!   next backward pass overwrites the gradients instead ([`GradBuffers`]).

use difflab_models::GradSquares;
use tch::nn::VarStore;

use super::engine::{Loss, StepEngine, Update};
use super::objective::Objective;
use super::{GradBuffers, StepInputs, TrainingConfig};
use crate::optim::{AdamW, Ema, clip_grad_norm_deferred_with};
use difflab_pipeline::Network;
use difflab_pipeline::checkpoint::CheckpointError;

/// The step through difflab's CPU kernels (see the [module docs](self)).
pub(crate) struct FusedCpuEngine {
    optimizer: AdamW,
    ema: Ema,
    grads: GradBuffers,
    /// What the last micro-batch's taped backward pass summed for clipping.
    squares: GradSquares,
    /// Whether the MLP may run its taped pass (f32: not under bf16 autocast).
    tape_mlp: bool,
}

impl FusedCpuEngine {
    /// AdamW over `vs` and an EMA of it kept in `ema_vs` (set to `vs`'s weights); with
    /// `tape_mlp`, an MLP trains through its hand-written pass.
    pub(crate) fn new(
        vs: &VarStore,
        ema_vs: &VarStore,
        training: &TrainingConfig,
        tape_mlp: bool,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            optimizer: AdamW::new(vs, &training.optimizer),
            ema: Ema::new(vs, ema_vs, &training.ema)?,
            grads: GradBuffers::default(),
            squares: GradSquares::default(),
            tape_mlp,
        })
    }
}

impl StepEngine for FusedCpuEngine {
    fn loss(&mut self, network: &Network, objective: &Objective, inputs: &StepInputs) -> Loss {
        if let (Network::Mlp(mlp), true) = (network, self.tape_mlp) {
            let mut tape = None;
            let terms = objective.terms(inputs, |x_t, t| match mlp.forward_taped(x_t, t) {
                Ok(Some((output, recorded))) => {
                    tape = Some(recorded);
                    output
                }
                _ => mlp.forward(x_t, t),
            });
            if let Some(tape) = tape {
                let (value, grad) = terms.value_and_grad(1.0);
                return Loss {
                    value,
                    taped: Some((grad, tape)),
                };
            }
            return Loss {
                value: terms.value(),
                taped: None,
            };
        }
        Loss {
            value: objective.network_terms(network, inputs).value(),
            taped: None,
        }
    }

    fn backward(&mut self, loss: Loss, network: &Network, divisor: f64, last: bool) {
        self.squares = self
            .grads
            .backward(loss, network, divisor, &mut self.optimizer, last);
    }

    fn clip(&mut self, vs: &VarStore, max_norm: f64) -> (f64, f32) {
        clip_grad_norm_deferred_with(vs, max_norm, &std::mem::take(&mut self.squares))
    }

    fn update(&mut self, vs: &VarStore, ema_vs: &mut VarStore, update: Update) {
        // The optimizer step, the clipping factor, zeroing and (at steps that average) the EMA
        // in one pass over each parameter; the EMA's copies and untrained variables after it.
        let weight = self.ema.averaging_weight(update.step);
        let shadows = weight.map(|_| ema_vs.variables());
        let zero = self.grads.zero_in_update();
        self.optimizer.step_clip_zero_ema(
            update.lr,
            update.grad_scale,
            shadows.as_ref().zip(weight),
            zero,
        );
        self.grads.updated();
        let averaged: std::collections::HashSet<&str> = match weight {
            Some(_) => self.optimizer.names().collect(),
            None => Default::default(),
        };
        self.ema
            .update_except(vs, ema_vs, update.step, &|name| averaged.contains(name));
    }

    fn discard(&mut self) {
        self.squares = GradSquares::default();
        self.grads.discard(&mut self.optimizer);
    }

    fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    fn name(&self) -> &'static str {
        "fused-cpu"
    }
}
