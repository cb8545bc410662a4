//! A network built from a [`ModelConfig`]: one handle for every model kind.

use difflab_models::{MlpDenoiser, ModelError, ModelSummary, SrUNet, UNet, UNetInputs};
use difflab_samplers::Conditioning;
use tch::{Tensor, nn};

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

impl Network {
    /// The network's output for `x_t` at timesteps `t` with `cond`; `train` enables dropout.
    /// An SR-UNet takes its (augmented) low-resolution image from `cond.image` and the
    /// augmentation level from `cond.noise_level`.
    ///
    /// # Panics
    /// When an SR-UNet is given no low-resolution image or level (a programming error: the
    /// trainer and the cascade always set both).
    pub fn forward_cond(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        train: bool,
    ) -> Tensor {
        match self {
            Network::Unet(unet) => {
                let inputs = UNetInputs {
                    class_labels: cond.class_labels.as_ref(),
                    label_vector: cond.label_vector.as_ref(),
                    cond_image: cond.image.as_ref(),
                    context: cond.context.as_ref(),
                    ..UNetInputs::default()
                };
                unet.forward(x_t, t, &inputs, train)
            }
            Network::Mlp(mlp) => mlp.forward(x_t, t),
            Network::SrUnet(sr) => {
                let (Some(lowres), Some(level)) = (&cond.image, &cond.noise_level) else {
                    panic!(
                        "an SR-UNet needs its low-resolution image (Conditioning::image) and noise level (Conditioning::noise_level)"
                    )
                };
                let inputs = UNetInputs {
                    class_labels: cond.class_labels.as_ref(),
                    label_vector: cond.label_vector.as_ref(),
                    context: cond.context.as_ref(),
                    lowres_noise_level: Some(level),
                    ..UNetInputs::default()
                };
                sr.try_forward(x_t, t, lowres, &inputs, train)
                    .unwrap_or_else(|e| panic!("SR-UNet: {e}"))
            }
        }
    }
}
