//! Reading a config file: typed YAML parsing with positions, then overrides, then validation.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{ExperimentConfig, Override, apply_override};

/// A config that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// YAML syntax, an unknown key or a wrong type; the message has line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde-saphyr's message, with the line, column and a snippet.
        message: String,
    },
    /// A malformed `--set`, or one whose result does not fit the config.
    #[error("--set {text}: {reason}")]
    Override {
        /// The argument as written.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed value outside its allowed range (schedule, sampler, model checks).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The validation error, naming the key and value.
        message: String,
    },
}

/// Parse YAML text (named `path` in errors) into a config, apply `overrides` in order, and
/// validate every section.
pub fn parse_config(
    text: &str,
    path: &Path,
    overrides: &[Override],
) -> Result<ExperimentConfig, ConfigError> {
    let parse_err = |e: serde_saphyr::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    // Typed parse of the file first: its errors carry line and column.
    let mut config: ExperimentConfig = serde_saphyr::from_str(text).map_err(parse_err)?;
    if !overrides.is_empty() {
        let mut tree: Value = serde_json::to_value(&config).expect("configs serialise");
        for o in overrides {
            apply_override(&mut tree, o)?;
            // Re-check after each override so the error names the one that broke it.
            config = serde_json::from_value(tree.clone()).map_err(|e| ConfigError::Override {
                text: o.text.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    validate(&config).map_err(|message| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// Read and parse a config file (see [`parse_config`]).
pub fn load_config(path: &Path, overrides: &[Override]) -> Result<ExperimentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_config(&text, path, overrides)
}

/// Range checks that serde cannot express, delegated to each section's owner.
fn validate(config: &ExperimentConfig) -> Result<(), String> {
    // The name becomes the default run folder `runs/<name>`.
    crate::files::check_name("name", &config.name)?;
    let schedule = config.schedule.build().map_err(|e| e.to_string())?;
    config.sampler.x0_processing().map_err(|e| e.to_string())?;
    if config.sampler.kind != difflab_samplers::SamplerKind::Cold {
        config
            .sampler
            .build(&schedule, None)
            .map_err(|e| e.to_string())?;
    }
    config.model.validate().map_err(|e| format!("model: {e}"))?;
    config.data.validate().map_err(|e| e.to_string())?;
    config.training.validate()?;
    config.logging.validate()?;
    let (every, ckpt) = (config.logging.eval_every, config.training.checkpoint_every);
    if every > 0 && !every.is_multiple_of(ckpt) {
        return Err(format!(
            "invalid logging.eval_every = {every}: evaluations run on checkpoints, so it must be a multiple of training.checkpoint_every ({ckpt})"
        ));
    }
    config.training.optimizer.validate()?;
    config.training.lr_schedule.validate()?;
    config.training.ema.validate()?;
    use difflab_samplers::SamplerKind;
    match (&config.process, config.sampler.kind) {
        (super::ProcessConfig::Cold { degradation }, SamplerKind::Cold) => {
            let d = degradation
                .build(&schedule, tch::Device::Cpu)
                .map_err(|e| e.to_string())?;
            config
                .sampler
                .build(&schedule, Some(d))
                .map_err(|e| e.to_string())?;
        }
        (super::ProcessConfig::Cold { .. }, kind) => {
            return Err(format!(
                "process.kind: cold is sampled with sampler.kind: cold (got {kind:?})"
            ));
        }
        (super::ProcessConfig::Gaussian, SamplerKind::Cold) => {
            return Err(
                "sampler.kind: cold needs process.kind: cold (a degradation to invert)".into(),
            );
        }
        _ => {}
    }
    Ok(())
}

/// The resolved config as YAML (what `config check` prints and runs record).
pub fn to_yaml(config: &ExperimentConfig) -> String {
    serde_saphyr::to_string(config).expect("configs serialise")
}
