//! A network built from a [`ModelConfig`]: one handle for every model kind.

use difflab_models::{MlpDenoiser, ModelError, ModelSummary, SrUNet, UNet};
use tch::nn;

use crate::ModelConfig;

/// The network a config describes, with its parameters in the VarStore it was built in.
// One or two per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Network {
    /// An image UNet.
    Unet(UNet),
    /// A super-resolution UNet.
    SrUnet(SrUNet),
    /// An MLP denoiser for vectors.
    Mlp(MlpDenoiser),
}

impl Network {
    /// Build the network of `config` under `vs` (parameters freshly initialised).
    pub fn build(vs: &nn::Path, config: &ModelConfig) -> Result<Self, ModelError> {
        Ok(match config {
            ModelConfig::Unet(c) => Self::Unet(UNet::new(vs, c)?),
            ModelConfig::SrUnet(c) => Self::SrUnet(SrUNet::new(vs, c)?),
            ModelConfig::Mlp(c) => Self::Mlp(MlpDenoiser::new(vs, c)?),
        })
    }

    /// Trainable parameters.
    pub fn num_parameters(&self) -> i64 {
        match self {
            Self::Unet(m) => m.num_parameters(),
            Self::SrUnet(m) => m.num_parameters(),
            Self::Mlp(m) => m.num_parameters(),
        }
    }

    /// Per-block output shapes and parameter counts for a `resolution`² input (ignored by the
    /// MLP, whose input is a vector).
    pub fn summary(&self, resolution: i64) -> Result<ModelSummary, ModelError> {
        match self {
            Self::Unet(m) => m.summary(resolution, resolution),
            Self::SrUnet(m) => m.summary(resolution, resolution),
            Self::Mlp(m) => m.summary(),
        }
    }
}
