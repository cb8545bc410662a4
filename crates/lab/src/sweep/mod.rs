//! Sweeps: a base config, a grid and/or a list of overrides, and the evaluation to run on each
//! point (`difflab sweep`, see `docs/sweeps.md`).
//!
//! This module is the pure part: reading the sweep file ([`spec`]), expanding and naming the
//! points and building their `difflab train` / `difflab eval` arguments ([`plan`], [`eval`]),
//! the per-point status file ([`status`]), the results tables ([`results`]) and the Slurm
//! script ([`slurm`]). The `difflab sweep` command starts the processes.

pub mod eval;
pub mod plan;
pub mod results;
pub mod slurm;
pub mod spec;
pub mod status;

use std::path::PathBuf;

pub use eval::{EvalJob, EvalResult, EvalSetting, eval_jobs, parse_eval_json, read_eval_json};
pub use plan::{Plan, Point, TrainMode, shell_join, shell_quote};
pub use results::{ResultRow, ResultsTable, Summary, collect, error_summary, higher_is_better};
pub use slurm::slurm_script;
pub use spec::{EvaluateSpec, SamplerSpec, StepsSpec, Sweep, SweepSpec, load_sweep, parse_sweep};
pub use status::{PointState, PointStatus, read_status, write_atomic, write_status};

/// A sweep that cannot be read, expanded or recorded.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// YAML syntax, an unknown key or a wrong type; the message has line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The sweep file.
        path: PathBuf,
        /// serde-saphyr's message.
        message: String,
    },
    /// A well-formed value that makes no sense (an empty grid list, a step count of 0).
    #[error("{path}: {message}")]
    Invalid {
        /// The sweep file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A point whose overrides do not load with the base config.
    #[error("{path}: point {index} ({name}): {message}")]
    Point {
        /// The sweep file.
        path: PathBuf,
        /// The point's index.
        index: usize,
        /// The point's name.
        name: String,
        /// The config error, naming the key.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}
