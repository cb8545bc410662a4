//! Training one model (a base model, an SR stage or one expert) from an experiment config.

mod config;
mod objective;
mod precision;
mod run_dir;
mod trainer;

pub use config::{LoggingConfig, NanPolicy, ProcessConfig, TrainingConfig};
pub use objective::{
    GaussianLossInputs, LossKind, cold_loss, gaussian_loss, min_snr_weight, per_sample_loss,
};
pub use precision::{Autocast, Precision};
pub use run_dir::{RunDir, resolve_checkpoint};
pub use trainer::{
    CheckpointEvaluator, TrainError, TrainOptions, TrainOutcome, train, train_with_evaluator,
};
pub(crate) use trainer::{apply_update, build_process, micro_batch_loss, mix};
