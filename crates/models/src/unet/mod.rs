//! The UNet denoiser, its configuration, blocks and summary.

mod blocks;
mod config;
mod model;
mod summary;

pub use blocks::{DownBlock, Downsample, MidBlock, UpBlock, Upsample};
pub use config::{TimeEmbeddingConfig, UNetConfig};
pub use model::UNet;
pub use summary::{ModelSummary, SummaryRow};
