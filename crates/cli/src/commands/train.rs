//! `difflab train`: train one model (a base model, an SR stage or one expert) from a config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use difflab_pipeline::checkpoint::{RunDir, read_state, resolve_checkpoint};
use difflab_pipeline::config::{load_config, load_recorded_config, parse_config, to_yaml};
use difflab_pipeline::{DeviceSpec, ExperimentConfig, Override};
use difflab_train::{CheckpointEvaluator, TrainOptions, train_with_evaluator};

use super::config::parse_override;

/// Arguments of `difflab train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The experiment config (YAML). With `--resume` it may be left out: the run's own
    /// `config.yaml` is used (or, if that was deleted, the config its latest checkpoint recorded).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
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
    let (config, source) = match &args.config {
        Some(path) => (load_config(path, &args.overrides)?, path.clone()),
        None => run_config(args.out.as_deref(), &args.overrides)?,
    };
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let device = device.unwrap_or(config.device).resolve()?;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // Not std::process::exit: its destructors would run under libtorch's running
            // threads. The last complete checkpoint stays; the unfinished one is a temporary
            // folder the next start removes.
            eprintln!("\nsecond interrupt: stopped without writing a checkpoint");
            difflab_ffi::exit_now(130);
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
    .with_context(|| format!("training {}", source.display()))?;
    if outcome.interrupted {
        eprintln!(
            "stopped at step {} — checkpoint {}\nresume with: difflab train --out {} --resume",
            outcome.step,
            outcome.checkpoint.display(),
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
    if outcome.skipped_files > 0 {
        eprintln!(
            "note: {} unreadable data file{} skipped (data.on_bad_file: skip; each was named above)",
            outcome.skipped_files,
            if outcome.skipped_files == 1 {
                " was"
            } else {
                "s were"
            }
        );
    }
    if outcome.skipped_batches > 0 {
        eprintln!(
            "note: {} batch{} skipped for a non-finite loss or gradient (training.on_nan: skip)",
            outcome.skipped_batches,
            if outcome.skipped_batches == 1 {
                " was"
            } else {
                "es were"
            }
        );
    }
    Ok(())
}

/// The config of the run in `out` for `--resume` without `--config`: its `config.yaml`, or the
/// config its latest checkpoint recorded when `config.yaml` is gone (training then writes it
/// back). `overrides` apply on top.
fn run_config(out: Option<&Path>, overrides: &[Override]) -> Result<(ExperimentConfig, PathBuf)> {
    let out = out.context("--resume without --config needs --out RUN: the run to continue")?;
    let yaml = RunDir::new(out).config();
    if yaml.exists() {
        return Ok((load_recorded_config(&yaml, overrides)?, yaml));
    }
    let checkpoint = resolve_checkpoint(out).with_context(|| {
        format!(
            "{} has no config.yaml; looking for a checkpoint",
            out.display()
        )
    })?;
    let state = read_state(&checkpoint)?;
    let path = checkpoint.join("state.json");
    let recorded = state.get("config").cloned().with_context(|| {
        format!(
            "{} has no config.yaml and {} records no config (written by an older difflab): pass --config",
            out.display(),
            path.display()
        )
    })?;
    let config: ExperimentConfig = serde_json::from_value(recorded)
        .with_context(|| format!("{}: the recorded \"config\"", path.display()))?;
    let config = parse_config(&to_yaml(&config), &path, overrides)?;
    eprintln!(
        "note: {} was missing; using the config recorded in {} (it is written back)",
        yaml.display(),
        path.display()
    );
    Ok((config, path))
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
