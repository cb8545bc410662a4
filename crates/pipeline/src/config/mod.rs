//! The experiment config: YAML that mirrors these structs one to one (`deny_unknown_fields`),
//! loaded with errors that name the file, line and column, and overridable from the command line
//! with `--set key.path=value`.

mod experiment;
mod load;
mod lowres;
mod optim;
mod overrides;
mod resume;
mod training;

pub use experiment::{ExperimentConfig, ModelConfig};
pub use load::{ConfigError, load_config, load_recorded_config, parse_config, to_yaml};
pub use lowres::{LowresNoiseConfig, check_sample_level};
pub use optim::{EmaConfig, LrConfig, LrSchedule, OptimizerConfig, OptimizerKind};
pub use overrides::{Override, apply_override};
pub use resume::{RESUMABLE_KEYS, resume_differences};
pub use training::{
    LoggingConfig, LossKind, MemoryFormat, NanPolicy, Precision, ProcessConfig, TrainingConfig,
};
