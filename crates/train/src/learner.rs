//! One model in training: its weights and their EMA, what it minimises, and the step that
//! changes them. The trainer, the bench and the parity harness all drive this one step.

use std::path::Path;

use difflab_samplers::{GeneratorLock, generator_lock, splitmix_63};
use difflab_schedulers::NoiseSchedule;
use serde::{Deserialize, Serialize};
use tch::{Device, nn::VarStore};

use super::engine::{LibtorchEngine, StepEngine, Update};
use super::objective::{Objective, Process};
use super::{Autocast, StepInputs, TrainError, store_to_channels_last};
use crate::optim::AdamW;
use difflab_data::Batch;
use difflab_pipeline::checkpoint::{CheckpointError, load_weights};
use difflab_pipeline::{ExperimentConfig, Network};

/// Which implementation of the step's stages a [`Learner`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// `fused_cpu` on the CPU, `libtorch` elsewhere; `DIFFLAB_KERNELS=off` in the environment
    /// (or a build without the `kernels` feature) picks `libtorch` everywhere.
    #[default]
    Auto,
    /// libtorch's operations only: PyTorch's own sequence (autograd, `clip_grad_norm_`,
    /// AdamW, EMA `lerp_`, `zero_grad`).
    Libtorch,
    /// difflab's CPU kernels: the MLP's hand-written pass, the clipping norm in one pass, and
    /// AdamW, clipping factor, zeroing and EMA in one pass per parameter.
    FusedCpu,
}

impl Engine {
    /// The engine `Auto` stands for on `device`: `FusedCpu` on the CPU where difflab's kernels
    /// are compiled in and enabled, else `Libtorch` (also what `FusedCpu` means without them).
    pub fn resolve(self, device: Device) -> Self {
        let kernels = difflab_models::ops::kernels_enabled();
        match self {
            Self::Auto if device == Device::Cpu && kernels => Self::FusedCpu,
            Self::FusedCpu if cfg!(feature = "kernels") => Self::FusedCpu,
            _ => Self::Libtorch,
        }
    }
}

/// Where a step is, for whoever watches it (phase timers, the parity harness; a data-parallel
/// run's gradient all-reduce goes where [`StepEvent::Gradients`] fires).
pub enum StepEvent<'a> {
    /// A micro-batch's inputs are drawn (or given).
    Inputs(&'a StepInputs),
    /// A micro-batch's loss is computed.
    Loss,
    /// A micro-batch's gradients are added.
    Backward,
    /// Every micro-batch's gradients are in (before clipping).
    Gradients(&'a VarStore),
    /// The norm is taken and clipping decided.
    Clipped,
    /// The weights and their EMA are updated.
    Updated,
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// The loss, averaged over the micro-batches.
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// The global gradient norm before clipping (NaN when the loss was not finite).
    pub grad_norm: f64,
    /// `Some("loss")` or `Some("gradient norm")` when that was NaN/inf: the step's gradients
    /// were dropped and nothing was updated.
    pub non_finite: Option<&'static str>,
}

/// One micro-batch's inputs, and the generator lock to hold while its loss and gradients are
/// computed (the network's dropout draws continue the stream its inputs were drawn from).
type MicroBatch = (StepInputs, Option<GeneratorLock>);

/// Hold libtorch's global generator, seeded for micro-batch `micro` of step `step`
/// (`splitmix_63(seed, step·grad_accum + micro)`): every draw of a step is a pure function of
/// (seed, step), so a resumed run draws what the uninterrupted one would have.
fn seed(config: &ExperimentConfig, step: u64, micro: usize) -> GeneratorLock {
    let rng = generator_lock();
    let accum = config.training.grad_accum as u64;
    tch::manual_seed(splitmix_63(config.seed, step * accum + micro as u64) as i64);
    rng
}

/// A model in training: the network and its variables, an EMA copy, the [`Objective`] and the
/// [`StepEngine`] that applies [`Learner::step`].
pub struct Learner {
    config: ExperimentConfig,
    network: Network,
    vs: VarStore,
    ema_network: Network,
    ema_vs: VarStore,
    objective: Objective,
    engine: Box<dyn StepEngine>,
    device: Device,
    bf16: bool,
}

impl Learner {
    /// The model `config` describes on `device`, its parameters drawn under
    /// `manual_seed(config.seed)` (for a UNet, the very weights diffusers' `UNet2DModel` draws
    /// under `torch.manual_seed(seed)`), the EMA a copy of them, the optimizer's moments zero.
    pub fn new(
        config: &ExperimentConfig,
        device: Device,
        engine: Engine,
    ) -> Result<Self, TrainError> {
        let schedule: NoiseSchedule = config.schedule.build()?;
        let objective = Objective::new(config, &schedule, device)?;
        // Holding libtorch's generator, so another thread's draws cannot land between the
        // seed and the weights.
        let rng = generator_lock();
        tch::manual_seed(config.seed as i64);
        let vs = VarStore::new(device);
        let network = Network::build(&vs.root(), &config.model)?;
        let ema_vs = VarStore::new(device);
        let ema_network = Network::build(&ema_vs.root(), &config.model)?;
        drop(rng);
        if config
            .training
            .memory_format
            .channels_last_for(&config.model)
        {
            store_to_channels_last(&vs);
            store_to_channels_last(&ema_vs);
        }
        let bf16 = config.training.precision.uses_bf16(device);
        let training = &config.training;
        let engine: Box<dyn StepEngine> = match engine.resolve(device) {
            #[cfg(feature = "kernels")]
            Engine::FusedCpu => {
                Box::new(super::FusedCpuEngine::new(&vs, &ema_vs, training, !bf16)?)
            }
            _ => Box::new(LibtorchEngine::new(&vs, &ema_vs, training)?),
        };
        Ok(Self {
            config: config.clone(),
            network,
            vs,
            ema_network,
            ema_vs,
            objective,
            engine,
            device,
            bf16,
        })
    }

    /// Start from the weights in `file` (a `model.safetensors`, names checked) instead of the
    /// seed's; the EMA starts from them too.
    pub fn load_weights(&mut self, file: &Path) -> Result<(), CheckpointError> {
        load_weights(&mut self.vs, file)?;
        let _guard = tch::no_grad_guard();
        self.ema_vs
            .copy(&self.vs)
            .map_err(|e| CheckpointError::Mismatch {
                file: file.to_path_buf(),
                tensor: "<ema>".into(),
                reason: e.to_string(),
            })
    }

    /// Continue from checkpoint directory `dir`: weights, EMA and optimizer moments.
    pub fn restore(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        load_weights(&mut self.vs, &dir.join("model.safetensors"))?;
        load_weights(&mut self.ema_vs, &dir.join("ema.safetensors"))?;
        crate::optim::load_optimizer(self.engine.optimizer_mut(), dir)
    }

    /// Optimizer step `step + 1` (`step` steps done), from the `grad_accum` micro-batches
    /// `micro_batch(i)` gives:
    ///
    /// ```text
    /// for each micro-batch: loss → backward (gradients summed, each loss / grad_accum)
    /// [a data-parallel run all-reduces the gradients here]
    /// clip the global norm → AdamW at the schedule's rate → EMA
    /// ```
    ///
    /// Each micro-batch comes from `next_batch`, its timesteps, noise and label dropout drawn
    /// from libtorch's generator seeded with `splitmix_63(seed, step·grad_accum + micro)` (a pure
    /// function of seed and step, so a resumed run draws what the uninterrupted one would
    /// have). A NaN/inf loss or gradient norm drops the step's gradients and updates nothing
    /// (the report says which). `observe` sees each stage as it ends.
    pub fn step(
        &mut self,
        step: u64,
        next_batch: &mut dyn FnMut() -> Result<Batch, TrainError>,
        observe: &mut dyn FnMut(StepEvent<'_>),
    ) -> Result<StepReport, TrainError> {
        let device = self.device;
        let mut draw = |config: &ExperimentConfig, process: &Process, micro: usize| {
            let batch = next_batch()?;
            let rng = seed(config, step, micro);
            Ok((StepInputs::draw(&batch, process, config, device), Some(rng)))
        };
        self.run(step, &mut draw, observe)
    }

    /// [`Learner::step`] on inputs drawn before (one per micro-batch), e.g. saved by a
    /// recorded run: the same stages, no draws but the network's own dropout.
    pub fn replay(
        &mut self,
        step: u64,
        inputs: &[StepInputs],
        observe: &mut dyn FnMut(StepEvent<'_>),
    ) -> Result<StepReport, TrainError> {
        let accum = self.config.training.grad_accum;
        if inputs.len() != accum {
            return Err(TrainError::Config(format!(
                "step {step}: {} micro-batches given, training.grad_accum = {accum}",
                inputs.len()
            )));
        }
        let mut given = |_: &ExperimentConfig, _: &Process, micro: usize| {
            Ok((inputs[micro].shallow_clone(), None))
        };
        self.run(step, &mut given, observe)
    }

    /// The step itself, micro-batches from `next`.
    fn run(
        &mut self,
        step: u64,
        next: &mut dyn FnMut(&ExperimentConfig, &Process, usize) -> Result<MicroBatch, TrainError>,
        observe: &mut dyn FnMut(StepEvent<'_>),
    ) -> Result<StepReport, TrainError> {
        let training = &self.config.training;
        let accum = training.grad_accum;
        let lr = (training.lr_schedule).lr_at(training.optimizer.lr, step, training.steps);
        let (mut loss_sum, mut finite) = (0.0, true);
        for micro in 0..accum {
            let (inputs, _rng) = next(&self.config, &self.objective.process, micro)?;
            observe(StepEvent::Inputs(&inputs));
            let loss = {
                let _autocast = self.bf16.then(|| Autocast::bf16(self.device));
                self.engine.loss(&self.network, &self.objective, &inputs)
            };
            let value = loss.value.double_value(&[]);
            observe(StepEvent::Loss);
            finite &= value.is_finite();
            loss_sum += value;
            if finite {
                let last = micro + 1 == accum;
                self.engine
                    .backward(loss, &self.network, accum as f64, last);
            }
            observe(StepEvent::Backward);
        }
        observe(StepEvent::Gradients(&self.vs));
        let loss = loss_sum / accum as f64;
        let (grad_norm, grad_scale) = match finite {
            true => self.engine.clip(&self.vs, training.grad_clip),
            false => (f64::NAN, 1.0),
        };
        observe(StepEvent::Clipped);
        let mut report = StepReport {
            loss,
            lr,
            grad_norm,
            non_finite: None,
        };
        if !finite || !grad_norm.is_finite() {
            self.engine.discard();
            report.non_finite = Some(if finite { "gradient norm" } else { "loss" });
            return Ok(report);
        }
        let update = Update {
            lr,
            step: step + 1,
            grad_scale,
        };
        self.engine.update(&self.vs, &mut self.ema_vs, update);
        observe(StepEvent::Updated);
        Ok(report)
    }

    /// The network being trained.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Its variables.
    pub fn vars(&self) -> &VarStore {
        &self.vs
    }

    /// The EMA network (previews and sampling use it).
    pub fn ema_network(&self) -> &Network {
        &self.ema_network
    }

    /// The EMA's variables.
    pub fn ema_vars(&self) -> &VarStore {
        &self.ema_vs
    }

    /// The optimizer (its moments are checkpointed).
    pub fn optimizer(&self) -> &AdamW {
        self.engine.optimizer()
    }

    /// The engine's name (`libtorch` or `fused-cpu`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The config it trains.
    pub fn config(&self) -> &ExperimentConfig {
        &self.config
    }
}
