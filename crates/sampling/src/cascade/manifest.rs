//! Cascade manifests: named stages, each a model (run, checkpoint or expert ensemble) with its
//! own sampler settings, guidance and conditioning-noise level.
//!
//! ```yaml
//! offload: true               # load each stage when it runs, free it after (one on the device)
//! stages:
//!   - name: base
//!     run: runs/anime-base
//!     sampler: {kind: ddim, steps: 50, eta: 0.0}
//!     guidance: 1.0
//!   - name: sr
//!     run: runs/anime-sr      # or checkpoint: …, or ensemble: configs/experts/sr.yaml
//!     weights: ema
//!     sampler: {steps: 25}
//!     noise_level: 0.2        # augmentation level of the low-resolution input
//! ```
//! Paths are relative to the current directory. Stages run in the order listed (or as picked
//! by `--cascade base+sr`); each SR stage's low-resolution input must have the shape of the
//! previous stage's output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest_file::{one_of, read_manifest};
use difflab_samplers::SamplerKeys;

use crate::{ClassChoice, EnsembleSpec, ModelInfo, SamplingError, StageSettings, WeightsKind};

/// A cascade manifest file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeManifest {
    /// The stages, lowest resolution first.
    pub stages: Vec<StageEntry>,
    /// Load each stage only while it runs, so one stage's weights are on the device at a time.
    #[serde(default)]
    pub offload: bool,
}

/// One stage of a [`CascadeManifest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    /// The name used by `--cascade` (e.g. `base`, `sr`).
    pub name: String,
    /// A run directory (its latest checkpoint).
    #[serde(default)]
    pub run: Option<PathBuf>,
    /// A checkpoint directory.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// An expert-ensemble manifest.
    #[serde(default)]
    pub ensemble: Option<PathBuf>,
    /// EMA (default) or raw weights (runs and checkpoints).
    #[serde(default)]
    pub weights: WeightsKind,
    /// Changes to the run's sampler settings: any `sampler:` keys; a `kind` switches sampler
    /// (see [`SamplerConfig::apply`](difflab_samplers::SamplerConfig::apply)).
    #[serde(default, skip_serializing_if = "SamplerKeys::is_empty")]
    pub sampler: SamplerKeys,
    /// Classifier-free guidance weight (default 1: none).
    #[serde(default)]
    pub guidance: Option<f64>,
    /// Class of every image (class-conditional stages; default: cycle through the classes).
    #[serde(default)]
    pub class: Option<i64>,
    /// SR stages: augmentation level of the low-resolution input (default: the run's
    /// `training.lowres_noise.sample`).
    #[serde(default)]
    pub noise_level: Option<f64>,
}

/// A stage's model, described (weights not loaded).
#[derive(Clone, Debug)]
// A handful per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StageSpec {
    /// One run or checkpoint.
    Single(ModelInfo),
    /// An expert ensemble.
    Ensemble(EnsembleSpec),
}

impl StageSpec {
    /// SHA-256 of the stage's weights (an ensemble's experts' hashes joined): what makes a
    /// resumed sampling job the same job.
    pub fn weights_digest(&self) -> Result<String, SamplingError> {
        match self {
            Self::Single(i) => i.weights_digest(),
            Self::Ensemble(e) => e
                .experts
                .iter()
                .map(|(_, _, _, info)| info.weights_digest())
                .collect::<Result<Vec<_>, _>>()
                .map(|d| d.join("+")),
        }
    }

    /// The stage's model description (an ensemble's shared one).
    pub fn info(&self) -> &ModelInfo {
        match self {
            Self::Single(i) => i,
            Self::Ensemble(e) => e.info(),
        }
    }
}

/// A stage ready to run: its model and its settings from the manifest.
#[derive(Clone, Debug)]
pub struct PlannedStage {
    /// The stage name.
    pub name: String,
    /// Its model.
    pub spec: StageSpec,
    /// Sampler changes from the manifest.
    pub sampler: SamplerKeys,
    /// Guidance from the manifest.
    pub guidance: Option<f64>,
    /// Class from the manifest.
    pub class: Option<i64>,
    /// Noise level from the manifest.
    pub noise_level: Option<f64>,
}

impl PlannedStage {
    /// A stage with the model's own settings (nothing from a manifest).
    pub fn of(name: &str, spec: StageSpec) -> Self {
        Self {
            name: name.to_string(),
            spec,
            sampler: SamplerKeys::default(),
            guidance: None,
            class: None,
            noise_level: None,
        }
    }

    /// Its settings with the command line's (`cli`) on top of the manifest's on top of the
    /// run's; `--noise-level` reaches only SR stages. Fails when a sampler key set by the
    /// manifest or the command line does not apply to the stage's sampler, or when the settings
    /// do not fit the stage's model ([`StageSettings::check`]): before anything is written.
    pub fn settings(&self, cli: &CliStageSettings) -> Result<StageSettings, SamplingError> {
        let info = self.spec.info();
        let sampler = info
            .sampler
            .apply(&self.sampler.then(&cli.sampler))
            .map_err(|e| {
                SamplingError::invalid(format!("stage {} ({}): {e}", self.name, info.label))
            })?;
        let settings = StageSettings {
            sampler,
            guidance: cli.guidance.or(self.guidance).unwrap_or(1.0),
            class: match cli.class.or(self.class) {
                Some(k) => ClassChoice::Fixed(k),
                None => ClassChoice::Cycle,
            },
            labels: cli.labels.clone(),
            // The command line's level is for the SR stages of the cascade.
            noise_level: match info.lowres {
                Some(_) => cli.noise_level.or(self.noise_level),
                None => self.noise_level,
            },
        };
        settings
            .check(info)
            .map_err(|e| SamplingError::invalid(format!("stage {}: {e}", self.name)))?;
        Ok(settings)
    }
}

/// Settings given on the command line; they apply to every stage run.
#[derive(Clone, Debug, Default)]
pub struct CliStageSettings {
    /// Sampler flags (`--sampler`, `--steps`, `--eta`, …) as sampler keys.
    pub sampler: SamplerKeys,
    /// `--guidance`.
    pub guidance: Option<f64>,
    /// `--class`.
    pub class: Option<i64>,
    /// `--labels`.
    pub labels: Option<Vec<f32>>,
    /// `--noise-level`.
    pub noise_level: Option<f64>,
}

impl CascadeManifest {
    /// Read a manifest file.
    pub fn open(path: &Path) -> Result<Self, SamplingError> {
        let manifest: Self = read_manifest(path)?;
        if manifest.stages.is_empty() {
            return Err(SamplingError::invalid(format!(
                "{}: stages: the cascade has no stages",
                path.display()
            )));
        }
        for (i, s) in manifest.stages.iter().enumerate() {
            // A stage's name becomes the folder `stages/<name>` of its images.
            difflab_pipeline::files::check_name(&format!("stages[{i}].name"), &s.name)
                .map_err(|e| SamplingError::invalid(format!("{}: {e}", path.display())))?;
            if manifest.stages[..i].iter().any(|p| p.name == s.name) {
                return Err(SamplingError::invalid(format!(
                    "{}: two stages are named {:?}",
                    path.display(),
                    s.name
                )));
            }
        }
        Ok(manifest)
    }

    /// The stages named in `selection` (`base+sr`; `None`: all, in order), described and
    /// checked: models exist, ensembles are valid, and resolutions chain ([`check_chain`]).
    pub fn plan(
        &self,
        path: &Path,
        selection: Option<&str>,
    ) -> Result<Vec<PlannedStage>, SamplingError> {
        let names: Vec<&str> = match selection {
            Some(s) => s.split('+').map(str::trim).collect(),
            None => self.stages.iter().map(|s| s.name.as_str()).collect(),
        };
        let available = || {
            self.stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut planned = Vec::with_capacity(names.len());
        for name in names {
            let Some(entry) = self.stages.iter().find(|s| s.name == name) else {
                return Err(SamplingError::invalid(format!(
                    "--cascade: {}: no stage named {name:?} (stages: {})",
                    path.display(),
                    available()
                )));
            };
            let what = format!("{}: stage {name}", path.display());
            let (key, model) = one_of(
                &what,
                &[
                    ("run", &entry.run),
                    ("checkpoint", &entry.checkpoint),
                    ("ensemble", &entry.ensemble),
                ],
            )?;
            let spec = if key == "ensemble" {
                StageSpec::Ensemble(EnsembleSpec::open(model)?)
            } else {
                StageSpec::Single(
                    ModelInfo::from_run(model, entry.weights)
                        .map_err(|e| SamplingError::invalid(format!("{what}: {e}")))?,
                )
            };
            planned.push(PlannedStage {
                name: name.to_string(),
                spec,
                sampler: entry.sampler.clone(),
                guidance: entry.guidance,
                class: entry.class,
                noise_level: entry.noise_level,
            });
        }
        check_chain(&planned)?;
        Ok(planned)
    }
}

/// Each stage after the first must be a super-resolution stage whose low-resolution input has
/// the shape of the previous stage's output.
pub fn check_chain(stages: &[PlannedStage]) -> Result<(), SamplingError> {
    for pair in stages.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let out = &prev.spec.info().shape;
        match &next.spec.info().lowres {
            None => {
                return Err(SamplingError::invalid(format!(
                    "stage {} follows stage {} but is not a super-resolution stage (model.kind: sr_unet)",
                    next.name, prev.name
                )));
            }
            Some(low) if &low.shape != out => {
                return Err(SamplingError::invalid(format!(
                    "stages do not chain: {} outputs {} but {} expects a {} input",
                    prev.name,
                    describe(out),
                    next.name,
                    describe(&low.shape)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `3×16×16`-style shape text.
fn describe(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join("×")
}

#[cfg(test)]
mod tests {
    use super::*;
    use difflab_samplers::SamplerKind;

    fn open(text: &str) -> Result<CascadeManifest, String> {
        let dir = std::env::temp_dir().join(format!(
            "difflab-manifest-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cascade.yaml");
        std::fs::write(&path, text).unwrap();
        let result = CascadeManifest::open(&path).map_err(|e| e.to_string());
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn stage_names_that_could_leave_the_output_folder_are_refused() {
        for bad in ["../../etc", "/abs", "a/b", ".."] {
            let err = open(&format!(
                "stages:\n  - name: base\n    run: r\n  - name: {bad:?}\n    run: s\n"
            ))
            .unwrap_err();
            assert!(err.contains("stages[1].name") && err.contains(bad), "{err}");
        }
        let err = open("stages:\n  - name: a\n    run: r\n  - name: a\n    run: s\n").unwrap_err();
        assert!(err.contains("two stages are named"), "{err}");
    }

    #[test]
    fn stage_sampler_keys_are_any_sampler_keys_checked_against_their_kind() {
        let m = open(
            "stages:\n  - name: base\n    run: r\n    sampler: {kind: ddpm, steps: 10, variance: fixed_large, clip_sample: false}\n  - name: sr\n    run: s\n    sampler: {steps: 25, thresholding: true}\n",
        )
        .unwrap();
        let base = &m.stages[0].sampler;
        assert_eq!(base.kind, Some(SamplerKind::Ddpm));
        assert_eq!(
            (base.steps, base.clip_sample, base.eta),
            (Some(10), Some(false), None)
        );
        assert_eq!(m.stages[1].sampler.thresholding, Some(true));
        // Written back with the keys it set only.
        let yaml = serde_saphyr::to_string(&m).unwrap();
        assert!(!yaml.contains("eta"), "{yaml}");

        // A key that does not apply to the stage's kind: named, with its line.
        let err = open(
            "stages:\n  - name: base\n    run: r\n    sampler:\n      kind: ddpm\n      eta: 0.5\n",
        )
        .unwrap_err();
        assert!(
            err.contains("sampler.eta = 0.5 does not apply to kind: ddpm")
                && err.contains("line 6"),
            "{err}"
        );
        // An unknown key.
        let err =
            open("stages:\n  - name: base\n    run: r\n    sampler: {stepz: 3}\n").unwrap_err();
        assert!(err.contains("stepz") && err.contains("line 4"), "{err}");
    }
}
