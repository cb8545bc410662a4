//! What changes the weights once a step's gradients are in: the optimizer, the EMA of the
//! weights, and what the gradients hold between steps ([`GradBuffers`]), kept together so
//! that the trainer and the bench run the same step.

use difflab_models::GradSquares;
use tch::nn;

use super::{GradBuffers, TrainingConfig};
use crate::checkpoint::CheckpointError;
use crate::network::Network;
use crate::optim::{AdamW, Ema};

use super::trainer::MicroBatchLoss;

/// The optimizer, the EMA and the gradients' state of one training loop.
pub(crate) struct Updater {
    /// AdamW over the model's trainable variables (its moments are checkpointed).
    pub optimizer: AdamW,
    ema: Ema,
    grads: GradBuffers,
}

/// What [`Updater::apply`] applies after a step's gradients are in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    /// The learning rate of this step.
    pub lr: f64,
    /// Optimizer steps completed after this one (1 after the first), for the EMA's decay.
    pub step: u64,
    /// The gradient clipping factor still to apply (1 for none; see
    /// [`crate::optim::clip_grad_norm_deferred`]).
    pub grad_scale: f32,
}

impl Updater {
    /// AdamW over `vs` and an EMA of it kept in `ema_vs` (checked against `vs`, and set to its
    /// weights), as `training` configures them.
    pub(crate) fn new(
        vs: &nn::VarStore,
        ema_vs: &nn::VarStore,
        training: &TrainingConfig,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            ema: Ema::new(vs, ema_vs, &training.ema)?,
            optimizer: AdamW::new(vs, &training.optimizer),
            grads: GradBuffers::default(),
        })
    }

    /// Backpropagate one micro-batch's `loss` divided by `divisor` ([`GradBuffers::backward`]);
    /// with `last` (the step's last micro-batch), the gradients' sums of squares the taped
    /// pass recorded, for clipping.
    pub(crate) fn backward(
        &mut self,
        loss: MicroBatchLoss,
        network: &Network,
        divisor: f64,
        last: bool,
    ) -> GradSquares {
        self.grads
            .backward(loss, network, divisor, &mut self.optimizer, last)
    }

    /// Drop the step's gradients (a step skipped for a non-finite loss or norm).
    pub(crate) fn discard(&mut self) {
        self.grads.discard(&mut self.optimizer);
    }

    /// The parameter update: AdamW at `update.lr` with the clipping factor, the gradients
    /// zeroed (unless the next backward pass overwrites them, see [`GradBuffers`]), then the
    /// EMA.
    pub(crate) fn apply(&mut self, vs: &nn::VarStore, ema_vs: &mut nn::VarStore, update: Update) {
        // The optimizer step, the clipping factor, zeroing and (at steps that average) the EMA
        // in one pass over each parameter; the EMA's copies and untrained variables after it.
        let weight = self.ema.averaging_weight(update.step);
        let shadows = weight.map(|_| ema_vs.variables());
        let zero = self.grads.zero_in_update();
        self.optimizer.step_fused(
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
}
