//! How a training step's gradients are computed and applied: one trait, [`StepEngine`], whose
//! methods are the step's stages in order (loss → backward → clip → update and EMA), and its
//! reference implementation in libtorch's operations, [`LibtorchEngine`]. The engine is chosen
//! once, when a [`super::Learner`] is built: the fused CPU engine (`fused_engine.rs`, with the
//! `kernels` feature) on the CPU where difflab's kernels are enabled, this one everywhere else
//! (CUDA, `DIFFLAB_KERNELS=off`, a build without the feature).

#[cfg(feature = "kernels")]
use difflab_models::MlpTape;
use tch::{Tensor, nn::VarStore};

use super::objective::Objective;
use super::{StepInputs, TrainingConfig};
use crate::optim::{AdamW, Ema, clip_grad_norm};
use difflab_pipeline::Network;
use difflab_pipeline::checkpoint::CheckpointError;

/// One micro-batch's loss, as an engine computed it.
pub(crate) struct Loss {
    /// The scalar loss (autograd reaches the network unless the engine recorded a tape).
    pub value: Tensor,
    /// For a network that ran without an autograd graph (the MLP's taped pass of the fused CPU
    /// engine): the loss's gradient with respect to the output, written out, and the tape.
    #[cfg(feature = "kernels")]
    pub taped: Option<(Tensor, MlpTape)>,
}

/// What an engine's update applies once a step's gradients are in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    /// The learning rate of this step.
    pub lr: f64,
    /// Optimizer steps completed after this one (1 after the first), for the EMA's decay.
    pub step: u64,
    /// The gradient clipping factor still to apply (1 for none), as the engine's
    /// [`StepEngine::clip`] returned it.
    pub grad_scale: f32,
}

/// The stages of a training step. [`super::Learner::step`] calls, per micro-batch,
/// [`StepEngine::loss`] then [`StepEngine::backward`], then once [`StepEngine::clip`] and
/// either [`StepEngine::update`] or, for a non-finite loss or norm, [`StepEngine::discard`].
/// Every implementation gives PyTorch's results (`loss.backward()`,
/// `clip_grad_norm_`, `AdamW.step()`, `EMAModel.step()`, `zero_grad()`) to float precision;
/// the parity tests hold each one to that.
pub(crate) trait StepEngine {
    /// The loss of one micro-batch (the network's forward pass included).
    fn loss(&mut self, network: &Network, objective: &Objective, inputs: &StepInputs) -> Loss;

    /// Add the gradient of `loss / divisor` to the parameters' gradients; `last` marks the
    /// step's last micro-batch.
    fn backward(&mut self, loss: Loss, network: &Network, divisor: f64, last: bool);

    /// The global L2 norm of the gradients, and the factor that clips them to `max_norm` (0:
    /// no clipping) if the engine left it for [`StepEngine::update`] to apply (else 1).
    fn clip(&mut self, vs: &VarStore, max_norm: f64) -> (f64, f32);

    /// AdamW at `update.lr` on the (clipped) gradients, then the EMA of the weights into
    /// `ema_vs`; the gradients are cleared for the next step.
    fn update(&mut self, vs: &VarStore, ema_vs: &mut VarStore, update: Update);

    /// Drop the step's gradients without an update.
    fn discard(&mut self);

    /// The optimizer (its moments are checkpointed).
    fn optimizer(&self) -> &AdamW;

    /// The optimizer, to restore its moments.
    fn optimizer_mut(&mut self) -> &mut AdamW;

    /// A short name for logs and reports.
    fn name(&self) -> &'static str;
}

/// The step in libtorch's operations only, PyTorch's own sequence: autograd, then
/// `clip_grad_norm_`, single-tensor AdamW and the EMA's `lerp_`, then `zero_grad`.
pub(crate) struct LibtorchEngine {
    optimizer: AdamW,
    ema: Ema,
}

impl LibtorchEngine {
    /// AdamW over `vs` and an EMA of it kept in `ema_vs` (set to `vs`'s weights).
    pub(crate) fn new(
        vs: &VarStore,
        ema_vs: &VarStore,
        training: &TrainingConfig,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            optimizer: AdamW::new(vs, &training.optimizer),
            ema: Ema::new(vs, ema_vs, &training.ema)?,
        })
    }
}

impl StepEngine for LibtorchEngine {
    fn loss(&mut self, network: &Network, objective: &Objective, inputs: &StepInputs) -> Loss {
        Loss {
            value: objective.network_terms(network, inputs).value(),
            #[cfg(feature = "kernels")]
            taped: None,
        }
    }

    fn backward(&mut self, loss: Loss, _network: &Network, divisor: f64, _last: bool) {
        if divisor == 1.0 {
            loss.value.backward();
        } else {
            (loss.value / divisor).backward();
        }
    }

    fn clip(&mut self, vs: &VarStore, max_norm: f64) -> (f64, f32) {
        (clip_grad_norm(vs, max_norm), 1.0)
    }

    fn update(&mut self, vs: &VarStore, ema_vs: &mut VarStore, update: Update) {
        debug_assert_eq!(update.grad_scale, 1.0, "clip_grad_norm scaled in place");
        self.optimizer.step(update.lr);
        self.optimizer.zero_grad();
        self.ema.update(vs, ema_vs, update.step);
    }

    fn discard(&mut self) {
        self.optimizer.zero_grad();
    }

    fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    fn name(&self) -> &'static str {
        "libtorch"
    }
}
