//! Expert-ensemble manifests (eDiff-I style): experts, each a run or checkpoint responsible
//! for a timestep interval, validated before any weights are loaded.
//!
//! ```yaml
//! experts:
//!   - name: high-noise
//!     run: runs/expert-high        # or checkpoint: runs/expert-high/checkpoints/step-2000
//!     interval: [500, 1000]        # [lo, hi): this expert denoises t in 500..999
//!     weights: ema                 # ema (default) | raw
//!   - name: low-noise
//!     run: runs/expert-low
//!     interval: [0, 500]
//! ```
//! Paths are relative to the current directory.

use std::path::{Path, PathBuf};

use difflab_ensemble::{Expert, ExpertEnsemble, check_tiling};
use difflab_samplers::Denoiser;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::manifest_file::{one_of, read_manifest};
use super::{LoadedModel, ModelInfo, SamplingError, WeightsKind};
use crate::NetworkDenoiser;

/// An ensemble manifest file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleManifest {
    /// The experts; their intervals must tile `[0, schedule.timesteps)`.
    pub experts: Vec<ExpertEntry>,
}

/// One expert of an [`EnsembleManifest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertEntry {
    /// A name for messages.
    pub name: String,
    /// A run directory (its latest checkpoint).
    #[serde(default)]
    pub run: Option<PathBuf>,
    /// A checkpoint directory.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// The timesteps `[lo, hi)` this expert denoises.
    pub interval: [i64; 2],
    /// EMA (default) or raw weights.
    #[serde(default)]
    pub weights: WeightsKind,
}

/// An ensemble whose experts are described but not loaded.
#[derive(Clone, Debug)]
pub struct EnsembleSpec {
    /// The manifest file.
    pub path: PathBuf,
    /// `(name, lo, hi, model)` per expert.
    pub experts: Vec<(String, i64, i64, ModelInfo)>,
}

impl EnsembleSpec {
    /// Read and validate an ensemble manifest: every expert's run exists, the experts share
    /// schedule, objective, process, output shape and conditioning, and their intervals tile
    /// `[0, T)`. Errors name the manifest and the experts.
    pub fn open(path: &Path) -> Result<Self, SamplingError> {
        let manifest: EnsembleManifest = read_manifest(path)?;
        let mut experts = Vec::with_capacity(manifest.experts.len());
        for e in &manifest.experts {
            let what = format!("{}: expert {}", path.display(), e.name);
            let (_, model) = one_of(&what, &[("run", &e.run), ("checkpoint", &e.checkpoint)])?;
            let info = ModelInfo::from_run(model, e.weights)
                .map_err(|err| SamplingError::invalid(format!("{what}: {err}")))?;
            experts.push((e.name.clone(), e.interval[0], e.interval[1], info));
        }
        let Some((first_name, _, _, first)) = experts.first() else {
            return Err(SamplingError::invalid(format!(
                "{}: an ensemble needs at least one expert",
                path.display()
            )));
        };
        for (name, _, _, info) in &experts[1..] {
            if let Some((field, a, b)) = first.incompatibility(info) {
                return Err(SamplingError::invalid(format!(
                    "{}: experts {first_name} and {name} differ in {field}: {a} vs {b}; all experts must share schedule, objective, process, data shape and conditioning",
                    path.display()
                )));
            }
        }
        let t = first.schedule.timesteps as i64;
        let intervals: Vec<(&str, i64, i64)> = experts
            .iter()
            .map(|(n, lo, hi, _)| (n.as_str(), *lo, *hi))
            .collect();
        check_tiling(&intervals, t)
            .map_err(|e| SamplingError::invalid(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            experts,
        })
    }

    /// The shared description (the first expert's).
    pub fn info(&self) -> &ModelInfo {
        &self.experts[0].3
    }
}

/// A stage's model: one network, or an ensemble of experts.
// A handful per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StageModel {
    /// One network.
    Single(LoadedModel),
    /// Experts with their intervals `(name, lo, hi, model)`.
    Ensemble(Vec<(String, i64, i64, LoadedModel)>),
}

impl StageModel {
    /// Load an ensemble's experts onto `device`.
    pub fn load_ensemble(spec: &EnsembleSpec, device: Device) -> Result<Self, SamplingError> {
        let experts = spec
            .experts
            .iter()
            .map(|(n, lo, hi, info)| Ok((n.clone(), *lo, *hi, info.load(device)?)))
            .collect::<Result<Vec<_>, SamplingError>>()?;
        Ok(Self::Ensemble(experts))
    }

    /// The description (for an ensemble, the first expert's; all share it).
    pub fn info(&self) -> &ModelInfo {
        match self {
            Self::Single(m) => &m.info,
            Self::Ensemble(e) => &e[0].3.info,
        }
    }

    /// The model as a denoiser (eval mode); an ensemble routes each sample by its timestep.
    pub fn denoiser(&self) -> Result<Box<dyn Denoiser + '_>, SamplingError> {
        match self {
            Self::Single(m) => Ok(Box::new(NetworkDenoiser::new(
                &m.network,
                m.info.prediction,
            ))),
            Self::Ensemble(experts) => {
                let t = self.info().schedule.timesteps as i64;
                let list = experts
                    .iter()
                    .map(|(name, lo, hi, m)| Expert {
                        name: name.clone(),
                        lo: *lo,
                        hi: *hi,
                        denoiser: NetworkDenoiser::new(&m.network, m.info.prediction),
                    })
                    .collect();
                Ok(Box::new(ExpertEnsemble::new(list, t)?))
            }
        }
    }

    /// What `sample.json` records about it: paths and weight hashes (per expert).
    pub fn record(&self) -> serde_json::Value {
        match self {
            Self::Single(m) => m.info.record.clone(),
            Self::Ensemble(e) => serde_json::json!({
                "experts": e.iter().map(|(n, lo, hi, m)| serde_json::json!({
                    "name": n, "interval": [lo, hi], "model": m.info.record,
                })).collect::<Vec<_>>(),
            }),
        }
    }
}
