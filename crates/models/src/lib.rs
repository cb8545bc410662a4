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
//! summary), [`sr_unet`] (super-resolution wrapper), [`mlp`] (vector denoiser) and [`mlp_tape`]
//! (its hand-written backward pass), [`conv`] (convolutions, batch-1 inference through the BLAS
//! or [`winograd`]), [`cpu_kernels`] (SiLU at
//! inference), [`diffusers`]
//! (config.json and weights), [`weights`] (strict safetensors loading), [`init`] (parameters
//! drawn as `torch.nn` draws them).

pub mod attention;
pub mod blas;
pub mod conv;
pub mod cpu_kernels;
pub mod diffusers;
pub mod embeddings;
mod error;
pub mod flops;
pub mod group_norm_silu;
pub mod init;
pub mod mlp;
pub mod mlp_tape;
pub mod omp_team;
pub mod params;
pub mod resnet;
pub mod sr_unet;
pub mod unet;
pub mod upsample;
pub mod weights;
pub mod winograd;

pub use attention::{AttentionConfig, AttentionKind, SpatialAttention};
pub use conv::Conv2d;
pub use diffusers::{DiffusersUNetConfig, export_diffusers_unet, load_diffusers_unet};
pub use embeddings::{ClassEmbedding, SinusoidalConfig, TimestepEmbedding, sinusoidal_embedding};
pub use error::ModelError;
pub use init::InitScheme;
pub use mlp::{Activation, MlpConfig, MlpDenoiser};
pub use mlp_tape::{GradSquares, MlpTape};
pub use params::ParamCount;
pub use resnet::{Resampling, ResnetBlock2D, ResnetConfig, TimeConditioning};
pub use sr_unet::{LowresUpsample, SrUNet, SrUNetConfig};
pub use unet::{
    ModelSummary, NoiseLevelEmbeddingConfig, Resample, SummaryRow, TimeEmbeddingConfig, UNet,
    UNetConfig, UNetInputs,
};
pub use weights::load_safetensors;
