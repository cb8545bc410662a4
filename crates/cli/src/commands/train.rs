//! `difflab train`: train one model (a base model, an SR stage or one expert) from a config.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use difflab_pipeline::config::load_config;
use difflab_pipeline::train::{TrainOptions, train};
use difflab_pipeline::{DeviceSpec, Override};

use super::config::parse_override;

/// Arguments of `difflab train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The experiment config (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Override config keys: `--set training.steps=20 --set schedule.kind=cosine`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in the run directory from its latest checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over in a run directory that already holds a run (deletes its checkpoints).
    #[arg(long)]
    overwrite: bool,
    /// Start from another run's weights (a run dir, `…/latest`, or a checkpoint dir) with a
    /// fresh optimizer — e.g. to branch an expert from a shared model.
    #[arg(long, value_name = "CHECKPOINT")]
    init: Option<PathBuf>,
}

/// Run the command.
pub fn run(args: &TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let config = load_config(&args.config, &args.overrides)?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let device = device.unwrap_or(config.device).resolve()?;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)"
        );
    })
    .context("installing the Ctrl-C handler")?;

    let options = TrainOptions {
        run_dir: run_dir.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        init: args.init.clone(),
        device,
    };
    let outcome = train(&config, &options, &stop)
        .with_context(|| format!("training {}", args.config.display()))?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {} — checkpoint {}\nresume with: difflab train --config {} --out {} --resume",
            outcome.step,
            outcome.checkpoint.display(),
            run_dir.join("config.yaml").display(),
            run_dir.display()
        );
    } else {
        eprintln!(
            "done: step {}, loss {:.4}, checkpoint {}{}",
            outcome.step,
            outcome.last_loss,
            outcome.checkpoint.display(),
            outcome
                .preview
                .map(|p| format!(", samples {}", p.display()))
                .unwrap_or_default()
        );
    }
    if outcome.skipped_batches > 0 {
        eprintln!(
            "note: {} batches were skipped (bad files or non-finite losses)",
            outcome.skipped_batches
        );
    }
    Ok(())
}
