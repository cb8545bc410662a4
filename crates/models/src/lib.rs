//! Denoising networks for difflab.
//!
//! A [`UNet`] built from a native [`UNetConfig`] (per-level full or linear attention, additive
//! or AdaGN time conditioning, conv or resnet resampling, and the conditioning routes: class
//! embedding with an optional null class, multi-hot label vector, conditioning image, context
//! gain, self-conditioning, low-resolution noise level — passed as [`UNetInputs`]), whose
//! parameter names equal diffusers' `UNet2DModel`, so that [`load_diffusers_unet`] reproduces a
//! diffusers model's outputs. An [`SrUNet`] wraps it for the super-resolution stages of a
//! cascade; an [`MlpDenoiser`] serves vector (2-D toy) data. Models know nothing about
//! schedules or samplers: they map `(x_t, t, conditioning)` to a tensor.
//!
//! File map: [`embeddings`] (sinusoidal code, time MLP, class table), [`resnet`] (residual
//! block), [`attention`] (spatial self-attention), [`unet`] (config, inputs, blocks, model,
//! summary), [`sr_unet`] (super-resolution wrapper), [`mlp`] (vector denoiser, and with the
//! `kernels` feature its hand-written training pass), [`ops`] (the operations the blocks are
//! written in: libtorch, or difflab's kernels where they apply), [`diffusers`] (config.json
//! and weights), [`weights`] (strict safetensors loading), [`init`] (parameters drawn as
//! `torch.nn` draws them).
#![forbid(unsafe_code)]

pub mod attention;
pub mod diffusers;
pub mod embeddings;
mod error;
pub mod flops;
pub mod init;
pub mod mlp;
#[cfg(feature = "kernels")]
mod mlp_taped;
pub mod ops;
pub mod params;
pub mod resnet;
pub mod sr_unet;
pub mod unet;
pub mod weights;

pub use attention::{AttentionConfig, AttentionKind, SpatialAttention};
#[cfg(feature = "kernels")]
pub use difflab_kernels::mlp_tape::{GradSquares, MlpTape};
pub use diffusers::{DiffusersUNetConfig, export_diffusers_unet, load_diffusers_unet};
pub use embeddings::{ClassEmbedding, SinusoidalConfig, TimestepEmbedding, sinusoidal_embedding};
pub use error::ModelError;
pub use init::InitScheme;
pub use mlp::{Activation, MlpConfig, MlpDenoiser};
pub use ops::Conv2d;
pub use params::ParamCount;
pub use resnet::{Resampling, ResnetBlock2D, ResnetConfig, TimeConditioning};
pub use sr_unet::{LowresUpsample, SrUNet, SrUNetConfig};
pub use unet::{
    ModelSummary, NoiseLevelEmbeddingConfig, Resample, SummaryRow, TimeEmbeddingConfig, UNet,
    UNetConfig, UNetInputs,
};
pub use weights::load_safetensors;
