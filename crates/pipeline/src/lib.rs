//! The composition layer: the only crate that knows about schedules, samplers and models at
//! once: configs, datasets, the trainer, checkpoints, logging, image output and the runtime
//! device choice.
#![forbid(unsafe_code)]

pub mod allocator;
pub mod bench;
pub mod cascade;
pub mod checkpoint;
pub mod config;
pub mod data;
mod device;
pub mod images;
pub mod logging;
mod network;
mod network_denoiser;
pub mod optim;
pub mod sampling;
pub mod sweep;
pub mod train;

pub use config::{ConfigError, ExperimentConfig, ModelConfig, Override, load_config};
pub use device::{DeviceError, DeviceSpec};
pub use network::Network;
pub use network_denoiser::NetworkDenoiser;
