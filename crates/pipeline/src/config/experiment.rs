//! The top-level config sections.

use difflab_models::{MlpConfig, SrUNetConfig, UNetConfig};
use difflab_samplers::SamplerConfig;
use difflab_schedulers::{Prediction, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::{LoggingConfig, ProcessConfig, TrainingConfig};
use crate::DeviceSpec;
use difflab_data::DataConfig;

/// One experiment: the data, the corruption process, the network, how to train it and how to
/// sample from it. Every section but `name` and `model` has defaults (see `docs/training.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name (the default run directory is `runs/<name>`).
    pub name: String,
    /// Master seed: parameter init, data order and noise derive from it.
    #[serde(default)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N.
    #[serde(default)]
    pub device: DeviceSpec,
    /// The training data.
    #[serde(default)]
    pub data: DataConfig,
    /// Gaussian diffusion or cold diffusion (with its degradation).
    #[serde(default)]
    pub process: ProcessConfig,
    /// Noise schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// What the network predicts: eps | x0 | v.
    #[serde(default)]
    pub objective: Prediction,
    /// The network.
    pub model: ModelConfig,
    /// Optimisation, checkpoints and previews.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Sampler used for preview grids and by default in `difflab sample`.
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// Progress lines and TensorBoard.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// Which network, with its settings (`kind` selects the variant; see `docs/models.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// The UNet for images (base models, experts).
    Unet(UNetConfig),
    /// The super-resolution UNet of a cascade stage (low-res image + noise level in).
    SrUnet(SrUNetConfig),
    /// The MLP denoiser for vector data (the 2-D toy).
    Mlp(MlpConfig),
}

impl ModelConfig {
    /// Range checks, with errors naming the key and value.
    pub fn validate(&self) -> Result<(), difflab_models::ModelError> {
        match self {
            Self::Unet(c) => c.validate(),
            Self::SrUnet(c) => c.validate(),
            Self::Mlp(c) => c.validate(),
        }
    }
}
