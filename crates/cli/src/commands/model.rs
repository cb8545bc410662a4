//! `difflab model summary`: every block of a network, its output shape and parameter count.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use difflab_models::load_diffusers_unet;
use difflab_pipeline::config::load_config;
use difflab_pipeline::{Network, Override};
use tch::{Device, nn};

use super::config::parse_override;

/// `difflab model …`.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print each block, its output shape and parameter count, and the total.
    Summary(SummaryArgs),
}

/// Arguments of `difflab model summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// A difflab config whose `model:` section to build.
    #[arg(
        long,
        conflicts_with = "diffusers_model",
        required_unless_present = "diffusers_model"
    )]
    config: Option<PathBuf>,
    /// Override config keys (with --config). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// A diffusers UNet2DModel folder instead of a config.
    #[arg(long, value_name = "DIR")]
    diffusers_model: Option<PathBuf>,
    /// Input height and width (default: the diffusers sample_size, else 32).
    #[arg(long)]
    resolution: Option<i64>,
}

/// Run the command.
pub fn run(command: &ModelCommand) -> Result<()> {
    let ModelCommand::Summary(args) = command;
    let (network, resolution) = if let Some(dir) = &args.diffusers_model {
        if !args.overrides.is_empty() {
            bail!("--set applies to --config, not --diffusers-model");
        }
        let (unet, _vs, config) = load_diffusers_unet(dir, Device::Cpu)
            .with_context(|| format!("loading {}", dir.display()))?;
        let size = config.sample_size().map(|(h, _)| h);
        (Network::Unet(unet), args.resolution.or(size).unwrap_or(32))
    } else {
        let path = args
            .config
            .as_ref()
            .expect("clap requires --config or --diffusers-model");
        let config = load_config(path, &args.overrides)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let network = Network::build(&vs.root(), &config.model).context("building the model")?;
        (network, args.resolution.unwrap_or(32))
    };
    let summary = network.summary(resolution).context("tracing shapes")?;
    print!("{summary}");
    Ok(())
}
