//! Sampling errors.

use difflab_schedulers::{Prediction, ScheduleError};

/// Why a sampler could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A sampler setting is out of range (names the key and value).
    #[error(transparent)]
    Config(#[from] ScheduleError),
    /// A sampler key set for a sampler that does not use it (names the key, value and kind).
    #[error(transparent)]
    Inapplicable(#[from] crate::InapplicableKey),
    /// The denoiser predicts something this sampler cannot use.
    #[error("the {sampler} sampler needs a denoiser predicting {needed:?}, got {got:?}")]
    Prediction {
        /// Sampler name.
        sampler: &'static str,
        /// What it needs.
        needed: Prediction,
        /// What the denoiser predicts.
        got: Prediction,
    },
    /// The cold sampler was asked for but no degradation was given.
    #[error("sampler.kind = cold needs a degradation (process.kind: cold)")]
    MissingDegradation,
    /// The result contains NaN or inf.
    #[error(
        "sampling produced non-finite values ({sampler}, {steps} steps); check the model and schedule"
    )]
    NonFinite {
        /// Sampler name.
        sampler: &'static str,
        /// Steps run.
        steps: usize,
    },
}
