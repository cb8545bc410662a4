//! Training one model (a base model, an SR stage or one expert) from an experiment config.
//!
//! File map: [`Learner`] (`learner.rs`: the model, its EMA and the step), [`StepInputs`]
//! (`inputs.rs`: what a micro-batch draws), `objective.rs` (process, target, loss),
//! `engine.rs` (the step's stages as a trait, in libtorch's operations) and `fused_engine.rs`
//! (the same in difflab's CPU kernels), `trainer.rs` (the loop: data, logs, checkpoints,
//! previews, evaluation), `parity.rs` (the comparison with PyTorch), [`optim`] (AdamW, EMA,
//! clipping), [`logging`] (progress lines, TensorBoard). The `training:` section's types live
//! with the rest of the config in `difflab_pipeline::config` and are re-exported here.
#![forbid(unsafe_code)]

mod engine;
#[cfg(feature = "kernels")]
mod fused_engine;
#[cfg(feature = "kernels")]
mod grads;
mod inputs;
mod learner;
mod memory_format;
mod objective;
pub mod parity;
mod precision;
mod preview;
#[cfg(all(test, feature = "kernels"))]
mod toy_step;
mod trainer;

pub use difflab_pipeline::checkpoint::{RunDir, resolve_checkpoint};
pub use difflab_pipeline::config::{
    LoggingConfig, LossKind, MemoryFormat, NanPolicy, Precision, ProcessConfig, TrainingConfig,
};
pub mod logging;
pub mod optim;
pub mod synthetic;
/// The per-step seed, `mix(seed, step·grad_accum + micro)`: [`difflab_samplers::splitmix_63`],
/// the one implementation.
pub use difflab_samplers::splitmix_63 as mix;
#[cfg(feature = "kernels")]
pub(crate) use fused_engine::FusedCpuEngine;
#[cfg(feature = "kernels")]
pub(crate) use grads::GradBuffers;
pub use inputs::StepInputs;
pub use learner::{Engine, Learner, StepEvent, StepReport};
pub use memory_format::{store_to_channels_last, to_channels_last};
pub use objective::{
    GaussianLossInputs, RegressionLoss, cold_loss, gaussian_loss, min_snr_weight, per_sample_loss,
};
pub use precision::Autocast;
pub use synthetic::synthetic_batch;
#[cfg(all(test, feature = "kernels"))]
pub(crate) use toy_step::ToyStep;
pub use trainer::{
    CheckpointEvaluator, TrainError, TrainOptions, TrainOutcome, train, train_with_evaluator,
};
