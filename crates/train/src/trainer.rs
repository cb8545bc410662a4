//! The training loop: data → loss → AdamW step → EMA, with checkpoints, previews, logs,
//! exact resume and a clean stop on Ctrl-C.
//!
//! Reproducibility: every random draw of step `s` (timesteps, noise, label dropout, network
//! dropout) comes from libtorch's generator re-seeded with `mix(seed, s, micro-batch)`, and the
//! data order is a pure function of (seed, epoch). A checkpoint therefore only needs the
//! weights, EMA, optimizer moments, step and data cursor to continue the exact same run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use difflab_models::{ModelError, UNetConfig};
use difflab_samplers::{Conditioning, GlobalSeedNoise, SampleError};
use difflab_schedulers::{NoiseSchedule, ScheduleError};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{Engine, Learner, NanPolicy, Process, ProcessConfig, RunDir};
use crate::logging::{EventWriter, LogError, TrainProgress};
use difflab_data::images::{grid_columns, save_grid};
use difflab_data::{DataCursor, DataError, DataLoader, Dataset, open_dataset};
use difflab_pipeline::checkpoint::{CheckpointContents, CheckpointError, read_state};
use difflab_pipeline::config::to_yaml;
use difflab_pipeline::{ExperimentConfig, ModelConfig, Network};
use difflab_sampling::NetworkDenoiser;
use difflab_sampling::cascade::{area_downsample, augment_at_level};

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
pub fn mix(seed: u64, n: u64) -> u64 {
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
    // Model, EMA copy, optimizer and objective, initialised from the seed.
    let mut learner = Learner::new(config, device, Engine::Auto)?;
    let fingerprint = model_fingerprint(&config.model);

    let mut start_step = 0u64;
    let mut init_from = None;
    if let Some(init) = &options.init {
        let dir = super::resolve_checkpoint(init)?;
        learner.load_weights(&dir.join("model.safetensors"))?;
        init_from = Some(dir);
    }
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
        learner.restore(dir)?;
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

    let checkpoints = run.checkpoints();
    let bf16 = training.precision.uses_bf16(device);
    let mut progress = TrainProgress::new(training.steps, start_step, config.logging.log_every);
    let start = match (&init_from, start_step) {
        (_, s) if s > 0 => format!("resuming at step {s}"),
        (Some(dir), _) => format!("from weights {}", dir.display()),
        (None, _) => "from scratch".into(),
    };
    progress.message(&format!(
        "training {} ({} parameters) on {} — {start} on {:?}{}",
        config.name,
        learner.network().num_parameters(),
        dataset.describe(),
        device,
        if bf16 { ", bf16 autocast" } else { "" }
    ));

    let mut last_loss = f64::NAN;
    let mut skipped = 0u64;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut preview = None;
    let mut step = start_step;
    let mut interrupted = false;
    let write_checkpoint = |step: u64, loader: &DataLoader, learner: &Learner, loss: f64| {
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
                model: learner.vars(),
                ema: Some(learner.ema_vars()),
                optimizer: learner.optimizer().state_tensors(),
                state,
            },
            training.keep_last,
        )
    };

    while step < training.steps {
        let report = learner.step(step, &mut || Ok(loader.next_batch()?), &mut |_| {})?;
        let (loss_value, lr, grad_norm) = (report.loss, report.lr, report.grad_norm);
        if let Some(what) = report.non_finite {
            match training.on_nan {
                NanPolicy::Stop => {
                    progress.finish();
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        what,
                    });
                }
                NanPolicy::Skip => {
                    skipped += 1;
                    progress.message(&format!(
                        "step {}: non-finite {what}, batch skipped ({skipped} so far)",
                        step + 1
                    ));
                }
            }
        } else {
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
            last_checkpoint = Some(write_checkpoint(step, &loader, &learner, last_loss)?);
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
                learner.ema_network(),
                learner.process(),
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
