//! The training loop: data → loss → AdamW step → EMA, with checkpoints, previews, logs,
//! exact resume and a clean stop on Ctrl-C.
//!
//! Reproducibility: every random draw of step `s` (timesteps, noise, label dropout, network
//! dropout) comes from libtorch's generator re-seeded with `mix(seed, s, micro-batch)`, and the
//! data order is a pure function of (seed, epoch). A checkpoint therefore only needs the
//! weights, EMA, optimizer moments, step and data cursor to continue the exact same run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use difflab_models::{GradSquares, MlpTape, ModelError, UNetConfig};
use difflab_samplers::{Conditioning, GlobalSeedNoise, SampleError, generator_lock};
use difflab_schedulers::{Degradation, ForwardProcess, NoiseSchedule, Prediction, ScheduleError};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor, nn};

use super::{
    Autocast, GaussianLossInputs, LossKind, NanPolicy, ProcessConfig, RunDir, Update, Updater,
    cold_loss, gaussian_loss, store_to_channels_last, to_channels_last,
};
use crate::cascade::{area_downsample, augment_at_level, augment_lowres};
use crate::checkpoint::{
    CheckpointContents, CheckpointError, load_optimizer, load_weights, read_state,
};
use crate::config::to_yaml;
use crate::data::{Batch, DataCursor, DataError, DataLoader, Dataset, open_dataset};
use crate::images::{grid_columns, save_grid};
use crate::logging::{EventWriter, LogError, TrainProgress};
use crate::optim::{AdamW, clip_grad_norm_deferred_with};
use crate::{ExperimentConfig, ModelConfig, Network, NetworkDenoiser};

/// Why training stopped with an error. Nothing already on disk is overwritten by a failed run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run directory holds a previous run and neither `--resume` nor `--overwrite` was given.
    #[error(
        "run directory {0} already holds a run; pass --resume to continue it, --overwrite to start over, or --out to use another directory"
    )]
    RunExists(PathBuf),
    /// `--resume` but no checkpoint to resume from.
    #[error("--resume: no checkpoint in {0}")]
    NothingToResume(PathBuf),
    /// The config is inconsistent with itself or with the data.
    #[error("{0}")]
    Config(String),
    /// The dataset could not be opened or read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model could not be built.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// A schedule value is out of range.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint was written by a run with a different model config.
    #[error(
        "checkpoint {path} was written for a different model config (fingerprint {found}, this config {expected}); use the run's own config.yaml"
    )]
    ConfigMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Its model-config fingerprint.
        found: String,
        /// This config's fingerprint.
        expected: String,
    },
    /// NaN or inf in the loss or gradients, with `on_nan: stop`.
    #[error(
        "non-finite {what} at step {step}; stopped without writing a checkpoint (the last good one is kept). Lower the learning rate, clip gradients, or set training.on_nan: skip"
    )]
    NonFinite {
        /// The step that failed.
        step: u64,
        /// `loss` or `gradient norm`.
        what: &'static str,
    },
    /// Preview sampling failed.
    #[error("preview sampling: {0}")]
    Sample(#[from] SampleError),
    /// Writing logs failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Writing the run's files failed.
    #[error("writing {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// How to run: where, and whether to continue or branch from an earlier run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Start over in a used run directory (its old checkpoints are deleted).
    pub overwrite: bool,
    /// Start from these weights (a checkpoint or run directory) with a fresh optimizer: used to
    /// branch experts from a shared model.
    pub init: Option<PathBuf>,
    /// Where tensors live.
    pub device: Device,
}

/// What a finished (or interrupted) run did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The last completed step.
    pub step: u64,
    /// True when stopped by Ctrl-C / SIGTERM before `training.steps`.
    pub interrupted: bool,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// The loss of the last step.
    pub last_loss: f64,
    /// Batches skipped for NaN (with `on_nan: skip`).
    pub skipped_batches: u64,
    /// The last preview grid, if any.
    pub preview: Option<PathBuf>,
}

/// SplitMix64-style mix of a seed with a counter (the per-step seed).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed
        ^ n.wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

/// Fingerprint of what determines the parameter layout: the model section.
fn model_fingerprint(model: &ModelConfig) -> String {
    let json = serde_json::to_string(model).expect("configs serialise");
    Sha256::digest(json.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The corruption process, built once.
pub(crate) enum Process {
    Gaussian {
        forward: ForwardProcess,
        timesteps: (i64, i64),
    },
    Cold {
        degradation: Box<dyn Degradation>,
        levels: (i64, i64),
    },
}

/// Check that the data fits the model, before anything is written.
fn check_data_fits_model(data: &dyn Dataset, config: &ExperimentConfig) -> Result<(), TrainError> {
    let shape = data.shape();
    let err = |m: String| Err(TrainError::Config(m));
    let label_dropout = config.training.label_dropout;
    match &config.model {
        ModelConfig::Unet(u) => {
            if config.data.lowres.is_some() {
                return err(
                    "data.lowres is for super-resolution stages (model.kind: sr_unet)".into(),
                );
            }
            check_unet_inputs(data, u, "model", label_dropout)
        }
        ModelConfig::SrUnet(sr) => {
            let Some(lowres) = config.data.lowres else {
                return err("model.kind: sr_unet needs data.lowres (the side of the low-resolution input, e.g. 16 for 16 -> 32)".into());
            };
            if sr.lowres_channels() != sr.unet.in_channels {
                return err(format!(
                    "model.lowres_channels = {} but the low-resolution input is the image itself ({} channels)",
                    sr.lowres_channels(),
                    sr.unet.in_channels
                ));
            }
            let factor = config.data.resolution / lowres;
            if let Some(s) = sr.scale_factor
                && s != factor
            {
                return err(format!(
                    "model.scale_factor = {s} but data.resolution / data.lowres = {} / {lowres} = {factor}",
                    config.data.resolution
                ));
            }
            if sr.unet.cond_channels > 0 || data.cond_shape().is_some() {
                return err("extra conditioning images for SR stages (model.unet.cond_channels, data.cond_images) are not supported by the trainer".into());
            }
            check_unet_inputs(data, &sr.unet, "model.unet", label_dropout)
        }
        ModelConfig::Mlp(m) => {
            if shape != [m.data_dim] {
                return err(format!(
                    "data examples have shape {shape:?} but model.data_dim = {}",
                    m.data_dim
                ));
            }
            Ok(())
        }
    }
}

/// The checks shared by UNets and the UNet inside an SR stage (`key` prefixes the config keys).
fn check_unet_inputs(
    data: &dyn Dataset,
    u: &UNetConfig,
    key: &str,
    label_dropout: f64,
) -> Result<(), TrainError> {
    let shape = data.shape();
    let err = |m: String| Err(TrainError::Config(m));
    if shape.len() != 3 || shape[0] != u.in_channels {
        return err(format!(
            "data examples have shape {shape:?} but {key}.in_channels = {}; set data.channels or {key}.in_channels",
            u.in_channels
        ));
    }
    match (data.num_classes(), u.num_classes) {
        (Some(n), Some(m)) if n != m => {
            return err(format!(
                "the data has {n} classes but {key}.num_classes = {m}"
            ));
        }
        (Some(n), None) => {
            return err(format!(
                "the data has {n} classes (data.label_mode: class) but {key}.num_classes is not set"
            ));
        }
        (None, Some(m)) => {
            return err(format!(
                "{key}.num_classes = {m} but the data has no class labels (set data.label_mode: class)"
            ));
        }
        _ => {}
    }
    if data.num_classes().is_some() && label_dropout > 0.0 && !u.null_class {
        return err(format!(
            "training.label_dropout needs {key}.null_class: true (the row used for dropped labels)"
        ));
    }
    if data.label_dim() != u.label_dim {
        return err(format!(
            "data label vectors have {:?} entries but {key}.label_dim = {:?}",
            data.label_dim(),
            u.label_dim
        ));
    }
    let cond = data.cond_shape().map(|s| s[0]).unwrap_or(0);
    if cond != u.cond_channels {
        return err(format!(
            "data conditioning images have {cond} channels but {key}.cond_channels = {}",
            u.cond_channels
        ));
    }
    if u.self_condition {
        return err(format!(
            "{key}.self_condition is not supported by the trainer yet"
        ));
    }
    Ok(())
}

/// The corruption process and loss of `config`, on `device`.
pub(crate) fn build_process(
    config: &ExperimentConfig,
    schedule: &NoiseSchedule,
    device: Device,
) -> Result<(Process, LossKind), TrainError> {
    let training = &config.training;
    let process = match &config.process {
        ProcessConfig::Gaussian => {
            let t = schedule.alphas_cumprod.len() as i64;
            let (lo, hi) = match training.timestep_range {
                Some([lo, hi]) if hi as i64 <= t => (lo as i64, hi as i64),
                Some([lo, hi]) => {
                    return Err(TrainError::Config(format!(
                        "invalid training.timestep_range = [{lo}, {hi}): must lie in [0, {t}] (schedule.timesteps)"
                    )));
                }
                None => (0, t),
            };
            Process::Gaussian {
                forward: ForwardProcess::new(schedule, device),
                timesteps: (lo, hi),
            }
        }
        ProcessConfig::Cold { degradation } => {
            if config.objective != Prediction::X0 {
                return Err(TrainError::Config(format!(
                    "process.kind: cold trains a restoration network: set objective: x0 (got {:?})",
                    config.objective
                )));
            }
            let degradation = degradation.build(schedule, device)?;
            let n = degradation.num_steps();
            let (lo, hi) = match training.timestep_range {
                Some([lo, hi]) => ((lo as i64).max(1), (hi as i64).min(n + 1)),
                None => (1, n + 1),
            };
            Process::Cold {
                degradation,
                levels: (lo, hi),
            }
        }
    };
    let loss_kind = training.loss.unwrap_or(match process {
        Process::Gaussian { .. } => LossKind::Mse,
        Process::Cold { .. } => LossKind::L1,
    });
    Ok((process, loss_kind))
}

/// Train `config` as described by `options`. `stop` is polled after every step (set it from a
/// Ctrl-C handler): the run then writes a checkpoint and returns with `interrupted = true`.
pub fn train(
    config: &ExperimentConfig,
    options: &TrainOptions,
    stop: &AtomicBool,
) -> Result<TrainOutcome, TrainError> {
    train_with_evaluator(config, options, stop, None)
}

/// Evaluates a checkpoint during training (`logging.eval_every`): given the step and the
/// checkpoint directory, returns named metrics, or an error message. The pipeline does not
/// know the metrics; the `difflab` binary plugs in `difflab eval`.
pub type CheckpointEvaluator<'a> = dyn FnMut(u64, &Path) -> Result<Vec<(String, f64)>, String> + 'a;

/// [`train`], calling `evaluate` on the checkpoint written every `logging.eval_every` steps and
/// logging what it returns as `eval/<name>` scalars. A failing evaluation is reported and
/// training goes on: it never costs the run.
pub fn train_with_evaluator(
    config: &ExperimentConfig,
    options: &TrainOptions,
    stop: &AtomicBool,
    mut evaluate: Option<&mut CheckpointEvaluator<'_>>,
) -> Result<TrainOutcome, TrainError> {
    let training = &config.training;
    training.validate().map_err(TrainError::Config)?;
    let run = RunDir::new(&options.run_dir);
    if options.resume && options.overwrite {
        return Err(TrainError::Config(
            "--resume and --overwrite exclude each other".into(),
        ));
    }
    if run.is_used() && !options.resume && !options.overwrite {
        return Err(TrainError::RunExists(run.root.clone()));
    }
    let resume_from = if options.resume {
        Some(
            run.checkpoints()
                .latest()?
                .ok_or_else(|| TrainError::NothingToResume(run.root.clone()))?,
        )
    } else {
        None
    };

    // Data first: a missing or empty dataset fails before the model is built.
    let dataset = open_dataset(&config.data, config.seed)?;
    check_data_fits_model(dataset.as_ref(), config)?;
    let micro_batch = training.batch_size / training.grad_accum;
    let mut loader = DataLoader::new(
        dataset.clone(),
        micro_batch,
        config.seed,
        config.data.workers,
        config.data.on_bad_file,
    );

    let device = options.device;
    let schedule: NoiseSchedule = config.schedule.build()?;
    let (process, loss_kind) = build_process(config, &schedule, device)?;

    // Model, EMA copy, optimizer — initialised from the seed, holding libtorch's global
    // generator so that another thread's draws cannot land between the seed and the weights.
    let rng = generator_lock();
    tch::manual_seed(mix(config.seed, u64::MAX) as i64);
    let mut vs = nn::VarStore::new(device);
    let network = Network::build(&vs.root(), &config.model)?;
    let mut ema_vs = nn::VarStore::new(device);
    let ema_network = Network::build(&ema_vs.root(), &config.model)?;
    drop(rng);
    lay_out_for_training(config, &vs, &ema_vs);
    let fingerprint = model_fingerprint(&config.model);

    let mut start_step = 0u64;
    if let Some(init) = &options.init {
        let dir = super::resolve_checkpoint(init)?;
        load_weights(&mut vs, &dir.join("model.safetensors"))?;
    }
    let mut updater = Updater::new(&vs, &ema_vs, training)?;
    if let Some(dir) = &resume_from {
        let state = read_state(dir)?;
        let found = state["model_fingerprint"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if found != fingerprint {
            return Err(TrainError::ConfigMismatch {
                path: dir.clone(),
                found,
                expected: fingerprint,
            });
        }
        load_weights(&mut vs, &dir.join("model.safetensors"))?;
        load_weights(&mut ema_vs, &dir.join("ema.safetensors"))?;
        load_optimizer(&mut updater.optimizer, dir)?;
        start_step = state["step"].as_u64().unwrap_or(0);
        let cursor: DataCursor =
            serde_json::from_value(state["data_cursor"].clone()).map_err(|e| {
                CheckpointError::Corrupt {
                    path: dir.join("state.json"),
                    reason: e.to_string(),
                }
            })?;
        loader.seek(cursor);
    }

    // The run directory: never clobbered without --overwrite.
    if options.overwrite && run.root.join("checkpoints").exists() {
        std::fs::remove_dir_all(run.root.join("checkpoints")).map_err(io_err(&run.root))?;
    }
    std::fs::create_dir_all(run.samples()).map_err(io_err(&run.samples()))?;
    let yaml = to_yaml(config);
    if !options.resume {
        let path = run.config();
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, &yaml)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io_err(&path))?;
    }
    let mut events = if config.logging.tensorboard {
        Some(EventWriter::new(run.tensorboard())?)
    } else {
        None
    };
    if let Some(ev) = events.as_mut() {
        ev.add_text(
            "config",
            &format!("```yaml\n{yaml}\n```"),
            start_step as i64,
        )?;
    }

    let null_class = match &config.model {
        ModelConfig::Unet(u) if u.null_class => u.num_classes,
        _ => None,
    };
    let checkpoints = run.checkpoints();
    let bf16 = training.precision.uses_bf16(device);
    let mut progress = TrainProgress::new(training.steps, start_step, config.logging.log_every);
    progress.message(&format!(
        "training {} ({} parameters) on {} — {} on {:?}{}",
        config.name,
        network.num_parameters(),
        dataset.describe(),
        if start_step > 0 {
            format!("resuming at step {start_step}")
        } else {
            "from scratch".into()
        },
        device,
        if bf16 { ", bf16 autocast" } else { "" }
    ));

    let mut last_loss = f64::NAN;
    let mut skipped = 0u64;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut preview = None;
    let mut step = start_step;
    let mut interrupted = false;
    let write_checkpoint = |step: u64,
                            loader: &DataLoader,
                            optimizer: &AdamW,
                            vs: &nn::VarStore,
                            ema_vs: &nn::VarStore,
                            loss: f64| {
        let state = json!({
            "step": step,
            "data_cursor": loader.cursor(),
            "seed": config.seed,
            "model_fingerprint": fingerprint,
            "loss": if loss.is_finite() { json!(loss) } else { json!(null) },
            "difflab_version": env!("CARGO_PKG_VERSION"),
            "rng": "stateless: step s draws from manual_seed(mix(seed, s, micro)); data order from (seed, epoch)",
        });
        checkpoints.write(
            &CheckpointContents {
                step,
                model: vs,
                ema: Some(ema_vs),
                optimizer,
                state,
            },
            training.keep_last,
        )
    };

    while step < training.steps {
        let lr = training
            .lr_schedule
            .lr_at(training.optimizer.lr, step, training.steps);
        let mut loss_sum = 0.0;
        let mut finite = true;
        let mut squares = GradSquares::default();
        for micro in 0..training.grad_accum {
            let batch = loader.next_batch()?;
            let _rng = generator_lock();
            tch::manual_seed(mix(
                config.seed,
                step * training.grad_accum as u64 + micro as u64,
            ) as i64);
            let loss = {
                let _autocast = bf16.then(|| Autocast::bf16(device));
                micro_batch_loss(
                    &batch, &network, &process, config, loss_kind, null_class, device,
                )
            };
            let value = loss.loss.double_value(&[]);
            finite &= value.is_finite();
            loss_sum += value;
            if finite {
                // The last micro-batch completes the gradients: their sums for clipping.
                let last = micro + 1 == training.grad_accum;
                let divisor = training.grad_accum as f64;
                squares = updater.backward(loss, &network, divisor, last);
            }
        }
        let loss_value = loss_sum / training.grad_accum as f64;
        // The clipping factor, where it is left to the optimizer's pass (see `Updater::apply`).
        let (grad_norm, grad_scale) = if finite {
            clip_grad_norm_deferred_with(&vs, training.grad_clip, &squares)
        } else {
            (f64::NAN, 1.0)
        };
        if !finite || !grad_norm.is_finite() {
            let what = if finite { "gradient norm" } else { "loss" };
            match training.on_nan {
                NanPolicy::Stop => {
                    progress.finish();
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        what,
                    });
                }
                NanPolicy::Skip => {
                    updater.discard();
                    skipped += 1;
                    progress.message(&format!(
                        "step {}: non-finite {what}, batch skipped ({skipped} so far)",
                        step + 1
                    ));
                }
            }
        } else {
            let update = Update {
                lr,
                step: step + 1,
                grad_scale,
            };
            updater.apply(&vs, &mut ema_vs, update);
            last_loss = loss_value;
        }
        step += 1;
        progress.update(step, loss_value, lr);
        if let Some(ev) = events.as_mut()
            && (step.is_multiple_of(config.logging.log_every) || step == training.steps)
            && loss_value.is_finite()
        {
            ev.add_scalar("train/loss", loss_value, step as i64)?;
            ev.add_scalar("train/lr", lr, step as i64)?;
            ev.add_scalar("train/grad_norm", grad_norm, step as i64)?;
        }
        interrupted = stop.load(Ordering::SeqCst) && step < training.steps;
        let last = step == training.steps || interrupted;
        if step.is_multiple_of(training.checkpoint_every) || last {
            last_checkpoint = Some(write_checkpoint(
                step,
                &loader,
                &updater.optimizer,
                &vs,
                &ema_vs,
                last_loss,
            )?);
            let eval_every = config.logging.eval_every;
            if let (Some(eval), Some(dir)) = (evaluate.as_mut(), last_checkpoint.as_ref())
                && eval_every > 0
                && step.is_multiple_of(eval_every)
            {
                match eval(step, dir) {
                    Ok(metrics) => {
                        let text: Vec<String> =
                            metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                        progress.message(&format!("eval at step {step}: {}", text.join(", ")));
                        if let Some(ev) = events.as_mut() {
                            for (name, value) in &metrics {
                                ev.add_scalar(&format!("eval/{name}"), *value, step as i64)?;
                            }
                        }
                    }
                    Err(e) => progress.message(&format!("eval at step {step} failed: {e}")),
                }
            }
        }
        let preview_due = training.sample_every > 0 && step.is_multiple_of(training.sample_every);
        if preview_due || (last && !interrupted) {
            let path = match write_preview(
                &ema_network,
                &process,
                config,
                &schedule,
                &dataset,
                step,
                &run,
                device,
            ) {
                Ok(path) => path,
                // A diverged model should not cost the user the run: the checkpoint is written.
                Err(TrainError::Sample(e @ SampleError::NonFinite { .. })) => {
                    progress.message(&format!("preview at step {step} skipped: {e}"));
                    None
                }
                Err(e) => return Err(e),
            };
            if let (Some(ev), Some(path)) = (events.as_mut(), path.as_ref())
                && let Ok(img) = image::open(path)
            {
                ev.add_image("samples", &img, step as i64)?;
            }
            preview = path.or(preview);
        }
        if interrupted {
            break;
        }
    }
    if let Some(ev) = events.as_mut() {
        ev.flush()?;
    }
    progress.finish();
    let checkpoint = match last_checkpoint {
        Some(c) => c,
        // Resumed a run that was already complete: point at its latest checkpoint.
        None => checkpoints
            .latest()?
            .ok_or_else(|| TrainError::NothingToResume(run.root.clone()))?,
    };
    Ok(TrainOutcome {
        step,
        interrupted,
        checkpoint,
        last_loss,
        skipped_batches: skipped + loader.skipped() as u64,
        preview,
    })
}

/// Put the model's and the EMA model's weights in the layout `training.memory_format` asks for
/// (see [`super::memory_format`]); call before the optimizer is built.
pub(crate) fn lay_out_for_training(
    config: &ExperimentConfig,
    vs: &nn::VarStore,
    ema_vs: &nn::VarStore,
) {
    if config
        .training
        .memory_format
        .channels_last_for(&config.model)
    {
        store_to_channels_last(vs);
        store_to_channels_last(ema_vs);
    }
}

/// The loss of one micro-batch, and, for the MLP, the tape of its hand-written backward pass.
pub(crate) struct MicroBatchLoss {
    /// The scalar loss (autograd reaches the whole network, except for a taped MLP).
    pub loss: Tensor,
    /// For the MLP that ran without an autograd graph ([`difflab_models::MlpTape`]): the
    /// loss's gradient with respect to the output, written out
    /// ([`super::RegressionLoss::value_and_grad`]),
    /// and the tape.
    taped: Option<(Tensor, MlpTape)>,
}

impl MicroBatchLoss {
    /// A loss that backpropagates through autograd (for tests of the training loop's parts).
    #[cfg(test)]
    pub(crate) fn through_autograd(loss: Tensor) -> Self {
        Self { loss, taped: None }
    }

    /// Whether the network ran without an autograd graph (the MLP's taped forward pass).
    pub(crate) fn is_taped(&self) -> bool {
        self.taped.is_some()
    }

    /// Backpropagate `loss / divisor` into the network's gradients: the MLP's hand-written
    /// pass from the loss's written-out output gradient when the forward pass was taped
    /// (adding to the gradients with `accumulate`, replacing them without), autograd
    /// otherwise (which always adds: `accumulate` must be set). With `sum_squares` the taped
    /// pass also returns the gradients' sums of squares for clipping (empty otherwise; see
    /// [`difflab_models::GradSquares`]). Training loops call it through
    /// [`super::Updater::backward`].
    pub(crate) fn backward(
        self,
        network: &Network,
        divisor: f64,
        accumulate: bool,
        sum_squares: bool,
    ) -> GradSquares {
        match (self.taped, network) {
            (Some((grad, tape)), Network::Mlp(mlp)) if divisor == 1.0 => {
                mlp.backward(tape, &grad, accumulate, sum_squares)
            }
            (Some((grad, tape)), Network::Mlp(mlp)) => {
                mlp.backward(tape, &(grad / divisor), accumulate, sum_squares)
            }
            (Some(_), _) => unreachable!("only the MLP records a tape"),
            (None, _) if !accumulate => {
                panic!("autograd adds to the gradients: zero them first (GradBuffers)")
            }
            (None, _) if divisor == 1.0 => {
                self.loss.backward();
                GradSquares::default()
            }
            (None, _) => {
                (self.loss / divisor).backward();
                GradSquares::default()
            }
        }
    }
}

/// The loss of one micro-batch; all randomness from the (already seeded) global generator.
/// The MLP runs its hand-written backward pass ([`difflab_models::MlpTape`]) when it trains in
/// f32 on the CPU without autocast; every other network, autograd.
pub(crate) fn micro_batch_loss(
    batch: &Batch,
    network: &Network,
    process: &Process,
    config: &ExperimentConfig,
    loss_kind: LossKind,
    null_class: Option<i64>,
    device: Device,
) -> MicroBatchLoss {
    let training = &config.training;
    let x0 = batch.x.to_device(device);
    let b = x0.size()[0];
    let opts = (Kind::Float, device);
    // Label dropout for classifier-free guidance: the same mask drops every label route.
    let drop =
        (training.label_dropout > 0.0).then(|| Tensor::rand([b], opts).lt(training.label_dropout));
    let class_labels = batch.class_labels.as_ref().map(|l| {
        let l = l.to_device(device);
        match (&drop, null_class) {
            (Some(mask), Some(null)) => l.where_self(&mask.logical_not(), &l.full_like(null)),
            _ => l,
        }
    });
    let label_vector = batch.label_vector.as_ref().map(|v| {
        let v = v.to_device(device);
        match &drop {
            Some(mask) => &v * mask.logical_not().to_kind(Kind::Float).unsqueeze(1),
            None => v,
        }
    });
    let mut cond = Conditioning {
        class_labels,
        label_vector,
        image: batch.cond_image.as_ref().map(|c| c.to_device(device)),
        context: None,
        noise_level: None,
    };
    if let (ModelConfig::SrUnet(_), Some(r)) = (&config.model, config.data.lowres) {
        // Noise-conditioning augmentation: a fresh level per image in [0, train_max].
        let lowres = area_downsample(&x0, r);
        let level = Tensor::rand([b], opts) * training.lowres_noise.train_max;
        cond.image = Some(augment_lowres(&lowres, &level, &lowres.randn_like()));
        cond.noise_level = Some(level);
    }
    let mut noise = x0.randn_like();
    if training.offset_noise > 0.0 && x0.dim() == 4 {
        let s = x0.size();
        noise += Tensor::randn([s[0], s[1], 1, 1], opts) * training.offset_noise;
    }
    let channels_last = training.memory_format.channels_last_for(&config.model);
    let tape_mlp = device == Device::Cpu && !training.precision.uses_bf16(device);
    let mut tape = None;
    let model = |x_t: &Tensor, t: &Tensor| {
        if let (Network::Mlp(mlp), true) = (network, tape_mlp)
            && let Ok(Some((output, recorded))) = mlp.forward_taped(x_t, t)
        {
            tape = Some(recorded);
            return output;
        }
        if channels_last {
            network.forward_cond(&to_channels_last(x_t), t, &cond, true)
        } else {
            network.forward_cond(x_t, t, &cond, true)
        }
    };
    let terms = match process {
        Process::Gaussian {
            forward,
            timesteps: (lo, hi),
        } => {
            let t = Tensor::randint_low(*lo, *hi, [b], (Kind::Int64, device));
            let inputs = GaussianLossInputs {
                x0: &x0,
                t: &t,
                noise: &noise,
            };
            gaussian_loss(
                &inputs,
                forward,
                config.objective,
                loss_kind,
                training.min_snr_gamma,
                model,
            )
        }
        Process::Cold {
            degradation,
            levels: (lo, hi),
        } => {
            let t = Tensor::randint_low(*lo, *hi, [b], (Kind::Int64, device));
            cold_loss(&x0, &t, &noise, degradation.as_ref(), loss_kind, model)
        }
    };
    match tape {
        Some(tape) => {
            let (loss, grad) = terms.value_and_grad(1.0);
            MicroBatchLoss {
                loss,
                taped: Some((grad, tape)),
            }
        }
        None => MicroBatchLoss {
            loss: terms.value(),
            taped: None,
        },
    }
}

/// Sample a preview grid from the EMA network with fixed noise (the same images at every
/// step, so grids are comparable) and save it as `samples/step-<N>.png`. Vector data (the 2-D
/// toy) is saved as `samples/step-<N>.csv` instead. Returns the image path, if one was written.
#[allow(clippy::too_many_arguments)]
fn write_preview(
    ema_network: &Network,
    process: &Process,
    config: &ExperimentConfig,
    schedule: &NoiseSchedule,
    dataset: &std::sync::Arc<dyn Dataset>,
    step: u64,
    run: &RunDir,
    device: Device,
) -> Result<Option<PathBuf>, TrainError> {
    let n = config.training.preview_images.max(1);
    let shape = dataset.shape();
    let mut full = vec![n as i64];
    full.extend(&shape);
    // One seeded stream for the whole grid: the same noise at every preview, and fast (a
    // per-image stream would re-seed the generator per image and step).
    let mut noise = GlobalSeedNoise::new(mix(config.seed, 0x5EED));
    let (sampler, x_start) = match process {
        Process::Gaussian { .. } => {
            let sampler = config.sampler.build(schedule, None)?;
            let x = difflab_samplers::NoiseSource::draw(&mut noise, &full, Kind::Float, device);
            (sampler, x)
        }
        Process::Cold { .. } => {
            // Cold sampling starts from degraded data: the first n examples at the top level.
            let ProcessConfig::Cold { degradation } = &config.process else {
                unreachable!()
            };
            let d = degradation.build(schedule, device)?;
            let x0 = Tensor::stack(
                &(0..n.min(dataset.len()))
                    .map(|i| {
                        dataset
                            .get(i)
                            .map(|e| Tensor::from_slice(&e.data).reshape(&shape[..]))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                0,
            )
            .to_device(device);
            let m = x0.size()[0];
            let top = Tensor::full([m], d.num_steps(), (Kind::Int64, device));
            let z =
                difflab_samplers::NoiseSource::draw(&mut noise, &x0.size(), Kind::Float, device);
            let x = d.degrade(&x0, &top, Some(&z));
            (config.sampler.build(schedule, Some(d))?, x)
        }
    };
    let denoiser = NetworkDenoiser::new(ema_network, config.objective);
    let cond = preview_conditioning(
        config,
        dataset.as_ref(),
        x_start.size()[0],
        device,
        &mut noise,
    )?;
    let samples = sampler.sample(&denoiser, x_start, &cond, &mut noise, &mut |_| {})?;
    if shape.len() == 1 {
        let path = run.samples().join(format!("step-{step:06}.csv"));
        let rows: Vec<Vec<f32>> =
            Vec::<Vec<f32>>::try_from(samples.to_device(Device::Cpu)).unwrap_or_default();
        let text: String = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
                    + "\n"
            })
            .collect();
        std::fs::write(&path, text).map_err(io_err(&path))?;
        return Ok(None);
    }
    let path = run.samples().join(format!("step-{step:06}.png"));
    save_grid(&samples, grid_columns(n), &path).map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(Some(path))
}

/// Preview conditioning: class-conditional models cycle through their classes; label vectors
/// and conditioning images come from the first `n` examples of the data; SR stages upsample
/// the first `n` images, downsampled and augmented at the sampling level.
fn preview_conditioning(
    config: &ExperimentConfig,
    dataset: &dyn Dataset,
    n: i64,
    device: Device,
    noise: &mut dyn difflab_samplers::NoiseSource,
) -> Result<Conditioning, TrainError> {
    let (u, lowres) = match &config.model {
        ModelConfig::Unet(u) => (u, None),
        ModelConfig::SrUnet(sr) => (&sr.unet, config.data.lowres),
        ModelConfig::Mlp(_) => return Ok(Conditioning::none()),
    };
    let class_labels = u
        .num_classes
        .map(|k| Tensor::arange(n, (Kind::Int64, device)).remainder(k));
    let examples = if u.label_dim.is_some() || u.cond_channels > 0 || lowres.is_some() {
        (0..n as usize)
            .map(|i| dataset.get(i % dataset.len()))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let stack = |rows: Vec<Tensor>| Tensor::stack(&rows, 0).to_device(device);
    let label_vector = u.label_dim.map(|_| {
        stack(
            examples
                .iter()
                .map(|e| Tensor::from_slice(e.labels.as_deref().unwrap_or(&[])))
                .collect(),
        )
    });
    let image = (u.cond_channels > 0).then(|| {
        let shape = dataset.cond_shape().unwrap_or_default();
        stack(
            examples
                .iter()
                .map(|e| Tensor::from_slice(e.cond.as_deref().unwrap_or(&[])).reshape(&shape[..]))
                .collect(),
        )
    });
    let (image, noise_level) = match lowres {
        None => (image, None),
        Some(r) => {
            let shape = dataset.shape();
            let hr = stack(
                examples
                    .iter()
                    .map(|e| Tensor::from_slice(&e.data).reshape(&shape[..]))
                    .collect(),
            );
            let small = area_downsample(&hr, r);
            let (z, level) = augment_at_level(&small, config.training.lowres_noise.sample, noise);
            (Some(z), Some(level))
        }
    };
    Ok(Conditioning {
        class_labels,
        label_vector,
        image,
        context: None,
        noise_level,
    })
}
