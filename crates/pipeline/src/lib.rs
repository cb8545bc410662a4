//! The experiment: the YAML config that composes data, schedule, process, model, training and
//! sampler ([`ExperimentConfig`]), the network it builds ([`Network`]), checkpoints and run
//! directories ([`checkpoint`]) and the runtime device choice ([`DeviceSpec`]). Training
//! (`difflab-train`), sampling (`difflab-sampling`) and the lab (`difflab-lab`) build on it.
#![forbid(unsafe_code)]

pub mod allocator;
pub mod checkpoint;
pub mod config;
mod device;
pub mod memory;
pub use difflab_files as files;
mod network;

pub use config::{ConfigError, ExperimentConfig, ModelConfig, Override, load_config};
pub use device::{DeviceError, DeviceSpec};
pub use network::Network;
