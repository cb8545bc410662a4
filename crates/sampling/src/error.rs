//! What can go wrong when setting up or running a sampling job.

use std::path::PathBuf;

use difflab_ensemble::EnsembleError;
use difflab_models::ModelError;
use difflab_samplers::SampleError;
use difflab_schedulers::ScheduleError;

use difflab_data::DataError;
use difflab_data::images::ImageIoError;
use difflab_pipeline::ConfigError;
use difflab_pipeline::checkpoint::CheckpointError;

/// Why a sampling job cannot start or did not finish; every variant names the file, stage,
/// key or value involved.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// A setting, manifest entry or input does not fit (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A manifest could not be parsed (YAML syntax, unknown key, wrong type).
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A run's config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A checkpoint is missing or unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Building or loading a model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The schedule or sampler settings.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The sampler failed (e.g. non-finite samples).
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// Experts that do not form an ensemble.
    #[error(transparent)]
    Ensemble(#[from] EnsembleError),
    /// Reading input images or data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Writing images.
    #[error(transparent)]
    Image(#[from] ImageIoError),
}

impl SamplingError {
    /// An [`SamplingError::Invalid`] from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}
