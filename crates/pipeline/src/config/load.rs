//! Reading a config file: typed YAML parsing with positions, then overrides, then validation.

use std::path::{Path, PathBuf};

use difflab_samplers::{SamplerConfig, SamplerKeys, SamplerKind};
use serde_json::Value;

use super::{ExperimentConfig, ModelConfig, Override, apply_override};

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
    let config: ExperimentConfig = serde_saphyr::from_str(text).map_err(parse_err)?;
    finish(config, path, overrides)
}

/// Apply `overrides` to a parsed config and validate the result.
fn finish(
    config: ExperimentConfig,
    path: &Path,
    overrides: &[Override],
) -> Result<ExperimentConfig, ConfigError> {
    let config = apply_overrides(config, overrides)?;
    validate(&config).map_err(|message| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// Apply `overrides` in order, except that `sampler.kind` goes first: switching sampler keeps
/// the sampler keys the new one takes and resets the others (see
/// [`SamplerConfig::with_kind`](difflab_samplers::SamplerConfig::with_kind)), and the other
/// `sampler.*` overrides then apply to it, whichever order they were given in.
fn apply_overrides(
    mut config: ExperimentConfig,
    overrides: &[Override],
) -> Result<ExperimentConfig, ConfigError> {
    let is_kind = |o: &&Override| o.path == ["sampler", "kind"];
    let (kinds, others): (Vec<&Override>, Vec<&Override>) = overrides.iter().partition(is_kind);
    let fail = |o: &Override, reason: String| ConfigError::Override {
        text: o.text.clone(),
        reason,
    };
    for o in kinds {
        let kind: SamplerKind =
            serde_json::from_value(o.value.clone()).map_err(|e| fail(o, e.to_string()))?;
        config.sampler = config.sampler.with_kind(kind);
    }
    if others.is_empty() {
        return Ok(config);
    }
    let mut tree: Value = serde_json::to_value(&config).expect("configs serialise");
    for o in others {
        apply_override(&mut tree, o)?;
        // Re-check after each override so the error names the one that broke it.
        config = serde_json::from_value(tree.clone()).map_err(|e| fail(o, e.to_string()))?;
    }
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

/// Read the config a run recorded (`RUN/config.yaml`), with `overrides`, as [`load_config`]
/// does. Runs recorded before each sampler took only its own keys wrote every sampler key
/// whatever the kind (`eta` under `kind: ddpm`, `cold_algorithm` under `ddim`, …); the sampler
/// ignored those then, and they are dropped here, so such runs load and sample as they did.
pub fn load_recorded_config(
    path: &Path,
    overrides: &[Override],
) -> Result<ExperimentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let err = match parse_config(&text, path, overrides) {
        Err(e @ ConfigError::Parse { .. }) => e,
        other => return other,
    };
    let Some(tree) = without_inapplicable_sampler_keys(&text) else {
        return Err(err);
    };
    let config: ExperimentConfig =
        serde_json::from_value(tree).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    finish(config, path, overrides)
}

/// The config tree of `text` without the `sampler:` keys its kind does not take; `None` when
/// it has none (whatever fails to parse is something else).
fn without_inapplicable_sampler_keys(text: &str) -> Option<Value> {
    let mut tree: Value = serde_saphyr::from_str(text).ok()?;
    let sampler = tree.get_mut("sampler")?.as_object_mut()?;
    let kind = match sampler.get("kind") {
        Some(kind) => serde_json::from_value::<SamplerKind>(kind.clone()).ok()?,
        None => SamplerKind::default(),
    };
    let before = sampler.len();
    // Unknown keys stay, to be reported as such.
    sampler.retain(|key, _| {
        key == "kind" || kind.takes(key) || !SamplerKeys::NAMES.contains(&key.as_str())
    });
    (sampler.len() < before).then_some(tree)
}

/// Range checks that serde cannot express, delegated to each section's owner.
fn validate(config: &ExperimentConfig) -> Result<(), String> {
    // The name becomes the default run folder `runs/<name>`.
    crate::files::check_name("name", &config.name)?;
    config.check_sampler(&config.sampler)?;
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
    check_resolution_fits_levels(config)
}

/// A UNet halves the image once per level after the first: the resolution must survive it
/// (caught here, by `difflab config check`, not by a shape error in the first step).
fn check_resolution_fits_levels(config: &ExperimentConfig) -> Result<(), String> {
    let unet = match &config.model {
        ModelConfig::Unet(u) => u,
        ModelConfig::SrUnet(sr) => &sr.unet,
        ModelConfig::Mlp(_) => return Ok(()),
    };
    let levels = unet
        .block_channels()
        .map_err(|e| format!("model: {e}"))?
        .len();
    let halvings = levels.saturating_sub(1) as u32;
    let factor = 1i64.checked_shl(halvings).unwrap_or(i64::MAX);
    let r = config.data.resolution;
    if r % factor != 0 {
        return Err(format!(
            "invalid data.resolution = {r}: the UNet's {levels} levels halve it {halvings} time(s), so it must be a multiple of {factor} (e.g. {})",
            (r / factor).max(1) * factor
        ));
    }
    Ok(())
}

impl ExperimentConfig {
    /// Whether `sampler` can sample this experiment's model: its settings in range for the
    /// schedule (or the degradation), and cold sampling exactly for cold diffusion. `Err` names
    /// the key and value. Checks the config's own `sampler:` on load; callers check the sampler
    /// a run is about to use after overrides (`difflab eval --sampler`, sweep evaluations).
    pub fn check_sampler(&self, sampler: &SamplerConfig) -> Result<(), String> {
        let schedule = self.schedule.build().map_err(|e| e.to_string())?;
        sampler.x0_processing().map_err(|e| e.to_string())?;
        match (&self.process, sampler.kind()) {
            (super::ProcessConfig::Cold { degradation }, SamplerKind::Cold) => {
                let d = degradation
                    .build(&schedule, tch::Device::Cpu)
                    .map_err(|e| e.to_string())?;
                sampler
                    .build(&schedule, Some(d))
                    .map_err(|e| e.to_string())?;
            }
            (super::ProcessConfig::Cold { .. }, kind) => {
                return Err(format!(
                    "process.kind: cold is sampled with sampler.kind: cold (got {kind})"
                ));
            }
            (super::ProcessConfig::Gaussian, SamplerKind::Cold) => {
                return Err(
                    "sampler.kind: cold needs process.kind: cold (a degradation to invert)".into(),
                );
            }
            (super::ProcessConfig::Gaussian, _) => {
                sampler.build(&schedule, None).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// The resolved config as YAML (what `config check` prints and runs record).
pub fn to_yaml(config: &ExperimentConfig) -> String {
    serde_saphyr::to_string(config).expect("configs serialise")
}
