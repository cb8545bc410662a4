//! The composition layer: the only crate that knows about schedules, samplers and models at
//! once. It will hold configs, datasets, the trainer, checkpoints and cascades; today it holds
//! the runtime device choice shared by every command.

mod device;
pub mod images;

pub use device::{DeviceError, DeviceSpec};
