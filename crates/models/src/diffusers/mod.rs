//! Loading diffusers `UNet2DModel` folders (`config.json` +
//! `diffusion_pytorch_model.safetensors`) into a [`UNet`] with identical outputs, and
//! exporting a [`UNet`] whose config diffusers can express as such a folder
//! ([`export_diffusers_unet`]).

mod config;
mod export;

pub use config::DiffusersUNetConfig;
pub use export::{DIFFUSERS_VERSION, export_diffusers_unet};

use std::path::Path;

use tch::{Device, nn::VarStore};

use crate::{ModelError, UNet, load_safetensors};

/// Name of the config file in a diffusers model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weights file in a diffusers model folder.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// Build the [`UNet`] described by `dir/config.json` on `device` and load
/// `dir/diffusion_pytorch_model.safetensors` into it. Fails with the file path and the key,
/// value or tensor at fault for an unsupported config, a missing, unexpected or mis-shaped
/// tensor, or a missing file.
pub fn load_diffusers_unet(
    dir: impl AsRef<Path>,
    device: Device,
) -> Result<(UNet, VarStore, DiffusersUNetConfig), ModelError> {
    let dir = dir.as_ref();
    let config_path = dir.join(CONFIG_FILE);
    let config = DiffusersUNetConfig::from_file(&config_path)?;
    let native = config
        .to_unet_config()
        .map_err(|e| e.in_file(&config_path))?;
    let mut vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &native).map_err(|e| e.in_file(&config_path))?;
    load_safetensors(&mut vs, &dir.join(WEIGHTS_FILE))?;
    Ok((unet, vs, config))
}
