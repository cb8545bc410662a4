//! `difflab train`: train one model (a base model, an SR stage or one expert) from a config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use difflab_pipeline::config::load_config;
use difflab_pipeline::{DeviceSpec, Override};
use difflab_train::{CheckpointEvaluator, TrainOptions, train_with_evaluator};

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
    let samples = config.logging.eval_samples;
    let mut evaluate = |step: u64, checkpoint: &Path| {
        evaluate_checkpoint(&run_dir, checkpoint, step, samples, device)
    };
    let outcome = train_with_evaluator(
        &config,
        &options,
        &stop,
        (config.logging.eval_every > 0).then_some(&mut evaluate as &mut CheckpointEvaluator<'_>),
    )
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

/// `logging.eval_every`: run `difflab eval` on `checkpoint` (the run's sampler,
/// `samples` samples) into `RUN/eval/step-<N>` and return its metrics.
fn evaluate_checkpoint(
    run: &Path,
    checkpoint: &Path,
    step: u64,
    samples: usize,
    device: tch::Device,
) -> Result<Vec<(String, f64)>, String> {
    let out = run.join("eval").join(format!("step-{step}"));
    let exe = std::env::current_exe().map_err(|e| format!("locating difflab: {e}"))?;
    let device = match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    let output = std::process::Command::new(exe)
        .args(["--device", &device, "eval", "--run"])
        .arg(run)
        .arg("--checkpoint")
        .arg(checkpoint)
        .args(["-n", &samples.to_string(), "--json", "--out"])
        .arg(&out)
        .output()
        .map_err(|e| format!("running difflab eval: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    let path = out.join("eval.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let metrics = json["metrics"]
        .as_object()
        .ok_or_else(|| format!("{}: no \"metrics\" object", path.display()))?;
    Ok(metrics
        .iter()
        .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
        .collect())
}
