//! The composition layer: the only crate that knows about schedules, samplers and models at
//! once. It will hold configs, datasets, the trainer, checkpoints and cascades; today it holds
//! the runtime device choice, the model-to-sampler adapter and image output.

pub mod config;
mod denoiser;
mod device;
pub mod images;
mod network;

pub use config::{ConfigError, ExperimentConfig, ModelConfig, Override, load_config};
pub use denoiser::UNetDenoiser;
pub use device::{DeviceError, DeviceSpec};
pub use network::Network;
