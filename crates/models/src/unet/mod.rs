//! The UNet denoiser, its configuration, inputs, blocks and summary.

mod blocks;
mod config;
mod inputs;
mod model;
mod summary;

pub use blocks::{
    ContextGain, DownBlock, Downsample, Downsampler, MidBlock, Resample, UpBlock, Upsample,
    Upsampler,
};
pub use config::{NoiseLevelEmbeddingConfig, TimeEmbeddingConfig, UNetConfig};
pub use inputs::UNetInputs;
pub use model::UNet;
pub use summary::{ModelSummary, SummaryRow};
