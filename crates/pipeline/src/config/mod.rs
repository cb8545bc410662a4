//! The experiment config: YAML that mirrors these structs one to one (`deny_unknown_fields`),
//! loaded with errors that name the file, line and column, and overridable from the command line
//! with `--set key.path=value`.

mod experiment;
mod load;
mod overrides;

pub use experiment::{ExperimentConfig, ModelConfig};
pub use load::{ConfigError, load_config, parse_config, to_yaml};
pub use overrides::{Override, apply_override};
