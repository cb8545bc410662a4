//! Denoising networks for difflab.
//!
//! A [`UNet`] built from a native [`UNetConfig`] (per-level full or linear attention, additive
//! or AdaGN time conditioning, class embedding with an optional null class), whose parameter
//! names equal diffusers' `UNet2DModel`, so that [`load_diffusers_unet`] reproduces a diffusers
//! model's outputs. Models know nothing about schedules or samplers: they map
//! `(x_t, t, class)` to a tensor.
//!
//! File map: [`embeddings`] (sinusoidal code, time MLP, class table), [`resnet`] (residual
//! block), [`attention`] (spatial self-attention), [`unet`] (config, blocks, model, summary),
//! [`diffusers`] (config.json and weights), [`weights`] (strict safetensors loading).

pub mod attention;
pub mod diffusers;
pub mod embeddings;
mod error;
pub mod params;
pub mod resnet;
pub mod unet;
pub mod weights;

pub use attention::{AttentionConfig, AttentionKind, SpatialAttention};
pub use diffusers::{DiffusersUNetConfig, load_diffusers_unet};
pub use embeddings::{ClassEmbedding, SinusoidalConfig, TimestepEmbedding, sinusoidal_embedding};
pub use error::ModelError;
pub use params::ParamCount;
pub use resnet::{ResnetBlock2D, ResnetConfig, TimeConditioning};
pub use unet::{ModelSummary, SummaryRow, TimeEmbeddingConfig, UNet, UNetConfig};
pub use weights::load_safetensors;
