//! The one error type of the crate.

use std::path::PathBuf;

/// Why an evaluation or the reference training failed; messages name the file or input.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Inputs of the wrong shape or size for a metric (e.g. fewer than two samples).
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The dataset could not be opened or read.
    #[error(transparent)]
    Data(#[from] difflab_data::DataError),
    /// Loading weights failed.
    #[error(transparent)]
    Checkpoint(#[from] difflab_pipeline::checkpoint::CheckpointError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl EvalError {
    /// A [`EvalError::File`] for `path`.
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}
