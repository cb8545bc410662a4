//! Errors of model construction, weight loading and input checking.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or calling a model. Every variant names what
/// was wrong (config key and value, tensor name and shape, file path).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A native configuration value outside its allowed range.
    #[error("invalid {key} = {value}: {reason}")]
    InvalidConfig {
        /// Config key (e.g. `model.norm_num_groups`).
        key: String,
        /// The offending value, as written.
        value: String,
        /// What would be accepted.
        reason: String,
    },
    /// A value of an external (e.g. diffusers) config that this crate does not implement.
    #[error("unsupported {key} = {value} (supported: {supported})")]
    Unsupported {
        /// Config key (e.g. `down_block_types[1]`).
        key: String,
        /// The offending value, as JSON.
        value: String,
        /// What is implemented.
        supported: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (shown in the message, so not also chained as a source).
        error: std::io::Error,
    },
    /// A file or folder could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The OS error (shown in the message, so not also chained as a source).
        error: std::io::Error,
    },
    /// A native configuration value that diffusers' `UNet2DModel` cannot express.
    #[error("cannot export to diffusers: {key} = {value} {reason}")]
    NotExportable {
        /// Native config key (e.g. `attention[1]`).
        key: String,
        /// The offending value.
        value: String,
        /// Why (e.g. "has no diffusers equivalent").
        reason: String,
    },
    /// A file could be read but not parsed.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A parameter the model needs is absent from a weights file.
    #[error("{path}: missing tensor `{name}` (model expects shape {expected:?})")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// Parameter name.
        name: String,
        /// Shape the model expects.
        expected: Vec<i64>,
    },
    /// A weights file holds a tensor the model has no parameter for.
    #[error("{path}: unexpected tensor `{name}` with shape {shape:?} (no such model parameter)")]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Its shape in the file.
        shape: Vec<i64>,
    },
    /// A weights file holds a tensor whose shape differs from the model parameter's.
    #[error("{path}: tensor `{name}` has shape {found:?}, model expects {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// Parameter name.
        name: String,
        /// Shape in the file.
        found: Vec<i64>,
        /// Shape the model expects.
        expected: Vec<i64>,
    },
    /// An error found while processing a file, wrapped with the file's path.
    #[error("{path}: {error}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong in it (shown in the message, so not also chained as a source).
        error: Box<ModelError>,
    },
    /// A forward-pass input with the wrong shape, type or range.
    #[error("invalid input `{what}`: {reason}")]
    InvalidInput {
        /// Which input (`x`, `t`, `class_labels`).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// Shorthand for [`ModelError::InvalidConfig`].
    pub fn invalid(
        key: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ModelError::Unsupported`].
    pub fn unsupported(
        key: impl Into<String>,
        value: impl ToString,
        supported: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            key: key.into(),
            value: value.to_string(),
            supported: supported.into(),
        }
    }

    /// Wrap `self` with the file it was found in.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Self::InFile {
            path: path.into(),
            error: Box::new(self),
        }
    }

    /// The innermost error, looking through [`ModelError::InFile`] wrappers.
    pub fn root(&self) -> &ModelError {
        match self {
            Self::InFile { error, .. } => error.root(),
            other => other,
        }
    }
}
