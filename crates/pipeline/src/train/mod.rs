//! Training one model (a base model, an SR stage or one expert) from an experiment config.

mod config;
mod grads;
mod memory_format;
mod objective;
mod precision;
mod run_dir;
#[cfg(test)]
mod toy_step;
mod trainer;
mod update;

pub use config::{LoggingConfig, NanPolicy, ProcessConfig, TrainingConfig};
pub(crate) use grads::GradBuffers;
pub use memory_format::{MemoryFormat, store_to_channels_last, to_channels_last};
pub use objective::{
    GaussianLossInputs, LossKind, RegressionLoss, cold_loss, gaussian_loss, min_snr_weight,
    per_sample_loss,
};
pub use precision::{Autocast, Precision};
pub use run_dir::{RunDir, resolve_checkpoint};
#[cfg(test)]
pub(crate) use toy_step::ToyStep;
pub use trainer::{
    CheckpointEvaluator, TrainError, TrainOptions, TrainOutcome, train, train_with_evaluator,
};
pub(crate) use trainer::{build_process, lay_out_for_training, micro_batch_loss, mix};
pub(crate) use update::{Update, Updater};
