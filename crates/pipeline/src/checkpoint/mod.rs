//! Checkpoints that resume a run bit for bit, written so that a crash or a full disk never
//! leaves a half-written or NaN checkpoint where a good one was.
//!
//! Layout of `runs/<name>/checkpoints/`:
//!
//! ```text
//! step-1000/                 one complete checkpoint (directories appear only when complete)
//!     model.safetensors      every variable of the model's VarStore (f32 as stored, bit-exact)
//!     ema.safetensors        the EMA copy, when training keeps one
//!     optimizer.safetensors  AdamW moments exp_avg.<var>, exp_avg_sq.<var>, step.<var>, step
//!     state.json             step, data cursor, RNG scheme, versions, config fingerprint
//!     KEEP                   (optional, made by the user) never pruned
//! latest                     text file "step-1000", replaced atomically after each write
//! step-2000.tmp-4242/        leftover of a write that crashed: ignored by `list`/`latest`
//! ```

mod dir;
mod run_dir;
pub mod safetensors;

use std::path::{Path, PathBuf};

pub use dir::{CheckpointContents, CheckpointDir};
pub use run_dir::{RunDir, RunLock, resolve_checkpoint};

/// File of the model weights inside a step directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the EMA weights inside a step directory.
pub const EMA_FILE: &str = "ema.safetensors";
/// File of the optimizer state inside a step directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of the run state (JSON) inside a step directory.
pub const STATE_FILE: &str = "state.json";
/// Marker file: a step directory holding it is never pruned.
pub const KEEP_FILE: &str = "KEEP";
/// Pointer file in the checkpoints directory naming the newest step directory.
pub const LATEST_FILE: &str = "latest";

/// Everything that can go wrong writing or reading a checkpoint; every variant names the file
/// or tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing a file or directory failed (including a full disk); when writing,
    /// the previous checkpoint and `latest` are left as they were.
    #[error("checkpoint I/O error on {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error (shown in the message, so not also chained as a source).
        error: std::io::Error,
    },
    /// A tensor is missing, unexpected or of the wrong shape for the model or optimizer being
    /// loaded (typically a checkpoint from another model config).
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Mismatch {
        /// The file (or in-memory source) holding the tensors.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What differs.
        reason: String,
    },
    /// A tensor to be saved holds NaN or ±inf: nothing was written.
    #[error("refusing to write a checkpoint: tensor `{tensor}` contains NaN or infinite values")]
    NonFinite {
        /// `<part>:<name>`, e.g. `model:net.0.weight` or `optimizer:exp_avg.net.0.weight`.
        tensor: String,
    },
    /// A checkpoint file or directory that should exist does not.
    #[error("no checkpoint at {path}")]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// A file exists but cannot be parsed, or says something impossible.
    #[error("corrupt checkpoint file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the run folder.
    #[error(
        "run folder {path} is in use by process {holder} (another `difflab train`?); wait for it to finish, or train into another folder"
    )]
    InUse {
        /// The run folder.
        path: PathBuf,
        /// The holder's process id, as its lock file says.
        holder: String,
    },
}

/// The run state `<dir>/state.json` of a checkpoint directory; it must be a JSON object with a
/// non-negative integer `"step"`.
pub fn read_state(dir: &Path) -> Result<serde_json::Value, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            CheckpointError::Missing { path: path.clone() }
        } else {
            CheckpointError::Io {
                path: path.clone(),
                error,
            }
        }
    })?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.clone(),
        reason,
    };
    let state: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let Some(step) = state.get("step").and_then(serde_json::Value::as_u64) else {
        return Err(corrupt("no non-negative integer \"step\"".into()));
    };
    // A checkpoint folder `step-<N>` holds the state of step N: anything else was moved or
    // copied by hand and would resume at the wrong place.
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(named) = named
        && named != step
    {
        return Err(corrupt(format!(
            "says step {step}, but its folder is {} (step {named})",
            dir.display()
        )));
    }
    Ok(state)
}

/// Load the safetensors file `file` into `vs`, in place and strictly: every variable must be
/// in the file with its shape, and the file must hold nothing else. The error names the file and
/// tensor; `vs` is unchanged on error. Bit-exact when the dtypes agree.
pub fn load_weights(vs: &mut tch::nn::VarStore, file: &Path) -> Result<(), CheckpointError> {
    use difflab_models::ModelError;
    if !file.exists() {
        return Err(CheckpointError::Missing {
            path: file.to_path_buf(),
        });
    }
    const HINT: &str = "checkpoint from another model config?";
    difflab_models::load_safetensors(vs, file).map_err(|e| match e {
        ModelError::Io { path, error } => CheckpointError::Io { path, error },
        ModelError::Parse { path, message } => CheckpointError::Corrupt {
            path,
            reason: message,
        },
        ModelError::MissingTensor {
            path,
            name,
            expected,
        } => CheckpointError::Mismatch {
            file: path,
            tensor: name,
            reason: format!(
                "missing from the file (the model has it with shape {expected:?}); {HINT}"
            ),
        },
        ModelError::UnexpectedTensor { path, name, shape } => CheckpointError::Mismatch {
            file: path,
            tensor: name,
            reason: format!(
                "in the file with shape {shape:?} but the model has no such variable; {HINT}"
            ),
        },
        ModelError::ShapeMismatch {
            path,
            name,
            found,
            expected,
        } => CheckpointError::Mismatch {
            file: path,
            tensor: name,
            reason: format!("shape {found:?} in the file, the model expects {expected:?}; {HINT}"),
        },
        other => CheckpointError::Corrupt {
            path: file.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// The named tensors of `<dir>/optimizer.safetensors`, and the file's path (for errors).
pub fn read_optimizer(
    dir: &Path,
) -> Result<(Vec<(String, tch::Tensor)>, PathBuf), CheckpointError> {
    let file = dir.join(OPTIMIZER_FILE);
    Ok((safetensors::read_safetensors(&file)?, file))
}

/// Whether `kind` is a floating-point dtype.
pub fn is_float(kind: tch::Kind) -> bool {
    matches!(
        kind,
        tch::Kind::Float | tch::Kind::Double | tch::Kind::Half | tch::Kind::BFloat16
    )
}

/// Hex SHA-256 of a file, streamed: recorded next to samples so that they name the exact
/// weights they came from.
pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let io = |error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buf).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buf[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
