//! `difflab export --diffusers OUT`: write a difflab UNet as a diffusers `UNet2DModel` folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_models::{UNet, export_diffusers_unet, load_safetensors};
use difflab_pipeline::config::load_config;
use difflab_pipeline::{ModelConfig, Override};
use tch::{Device, nn};

use super::config::parse_override;

/// Arguments of `difflab export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output folder for the diffusers model (must not exist, or be empty).
    #[arg(long = "diffusers", value_name = "OUT")]
    out: PathBuf,
    /// The difflab config the model was built from.
    #[arg(long)]
    config: PathBuf,
    /// Override config keys. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// The model weights (safetensors, difflab/diffusers parameter names).
    #[arg(long)]
    weights: PathBuf,
    /// Training resolution, written as diffusers' `sample_size`.
    #[arg(long, default_value_t = 32)]
    sample_size: i64,
}

/// Run the command.
pub fn run(args: &ExportArgs) -> Result<()> {
    let config = load_config(&args.config, &args.overrides)?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let unet = match &config.model {
        ModelConfig::Unet(c) => UNet::new(&vs.root(), c).context("building the model")?,
        _ => bail!(
            "only `model.kind: unet` can be exported to diffusers (diffusers has no SR-UNet or MLP model)"
        ),
    };
    load_safetensors(&mut vs, &args.weights)
        .with_context(|| format!("loading weights {}", args.weights.display()))?;
    export_diffusers_unet(&unet, &vs, &args.out, args.sample_size)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    eprintln!(
        "wrote {} (load it with diffusers.UNet2DModel.from_pretrained(\"{}\"))",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
