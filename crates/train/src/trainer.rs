//! The training loop: data → loss → AdamW step → EMA, with checkpoints, previews, logs,
//! exact resume and a clean stop on Ctrl-C.
//!
//! Reproducibility: every random draw of step `s` (timesteps, noise, label dropout, network
//! dropout) comes from libtorch's generator re-seeded with `mix(seed, s, micro-batch)`, and the
//! data order is a pure function of (seed, epoch). A checkpoint therefore only needs the
//! weights, EMA, optimizer moments, step and data cursor to continue the exact same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use difflab_data::{DataCursor, DataError, DataLoader, Dataset, open_dataset};
use difflab_models::{ModelError, UNetConfig};
use difflab_pipeline::checkpoint::{CheckpointContents, CheckpointError, RunLock, read_state};
use difflab_pipeline::config::{resume_differences, to_yaml};
use difflab_pipeline::{ExperimentConfig, ModelConfig};
use difflab_pipeline::{files, memory};
use difflab_samplers::SampleError;
use difflab_sampling::SamplingError;
use difflab_schedulers::ScheduleError;
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::Device;

use super::preview::{Preview, write_preview};
use super::{Engine, Learner, NanPolicy, RunDir};
use crate::logging::{EventWriter, LogError, TrainProgress};

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
    /// `--resume` with a config that would make the resumed run a different experiment.
    #[error(
        "checkpoint {path} was written with a different config; a resumed run must be the same experiment, but {differences}. Resume with the run's own config (difflab train --out RUN --resume, without --config), or start a new run with --out"
    )]
    ResumeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Each differing key, `key: old → new`, joined.
        differences: String,
    },
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
    /// Preview sampling could not be set up.
    #[error("preview: {0}")]
    Preview(#[from] SamplingError),
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
    /// Batches skipped for a non-finite loss or gradient (with `training.on_nan: skip`).
    pub skipped_batches: u64,
    /// Distinct unreadable data files skipped (with `data.on_bad_file: skip`).
    pub skipped_files: usize,
    /// The last preview grid, if any.
    pub preview: Option<PathBuf>,
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

/// Check, before anything is allocated, that training fits in the host's memory (on the CPU):
/// the weights, their gradients, AdamW's two moments and the EMA copy, one micro-batch's
/// activations and the preview's. Lower bounds (see [`difflab_pipeline::memory`]).
fn check_memory(config: &ExperimentConfig, device: Device) -> Result<(), TrainError> {
    if device != Device::Cpu {
        return Ok(()); // a CUDA device's memory is the driver's to report
    }
    let params = memory::parameter_floor(&config.model);
    let r = config.data.resolution;
    let training = &config.training;
    let micro = (training.batch_size / training.grad_accum) as f64;
    let step = micro * memory::activation_floor(&config.model, r, true);
    let preview =
        training.preview_images as f64 * memory::activation_floor(&config.model, r, false);
    let bytes = 4.0 * (5.0 * params + step.max(preview));
    memory::check_fits(
        &format!(
            "training {} (model.*, training.batch_size = {}, training.preview_images = {})",
            config.name, training.batch_size, training.preview_images
        ),
        bytes,
    )
    .map_err(TrainError::Config)
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
    let (mut run, mut step) = Run::open(config, options)?;
    let mut interrupted = false;
    while step < training.steps {
        run.step(step)?;
        step += 1;
        interrupted = stop.load(Ordering::SeqCst) && step < training.steps;
        let last = step == training.steps || interrupted;
        if step.is_multiple_of(training.checkpoint_every) || last {
            let dir = run.checkpoint(step)?;
            if let Some(eval) = evaluate.as_mut()
                && config.logging.eval_every > 0
                && step.is_multiple_of(config.logging.eval_every)
            {
                run.evaluate(step, &dir, eval)?;
            }
        }
        let preview_due = training.sample_every > 0 && step.is_multiple_of(training.sample_every);
        if preview_due || (last && !interrupted) {
            run.preview(step)?;
        }
        if interrupted {
            break;
        }
    }
    run.finish(step, interrupted)
}

/// A training run in progress: the model being trained, its data, its directory and logs.
struct Run<'a> {
    config: &'a ExperimentConfig,
    dir: RunDir,
    device: Device,
    learner: Learner,
    dataset: Arc<dyn Dataset>,
    loader: DataLoader,
    events: Option<EventWriter>,
    progress: TrainProgress,
    fingerprint: String,
    /// This process's hold on the run folder (see [`RunDir::lock`]), released on drop.
    _lock: RunLock,
    last_loss: f64,
    skipped: u64,
    last_checkpoint: Option<PathBuf>,
    preview: Option<PathBuf>,
}

impl<'a> Run<'a> {
    /// Check the options and the data, build the model (from the seed, `--init` weights or the
    /// latest checkpoint with `--resume`), prepare the run directory and the logs. Returns the
    /// run and the step to start from.
    fn open(
        config: &'a ExperimentConfig,
        options: &TrainOptions,
    ) -> Result<(Self, u64), TrainError> {
        config.training.validate().map_err(TrainError::Config)?;
        let dir = RunDir::new(&options.run_dir);
        if options.resume && options.overwrite {
            return Err(TrainError::Config(
                "--resume and --overwrite exclude each other".into(),
            ));
        }
        // One writer per run folder: a second `difflab train` on it fails here, naming us.
        let lock = dir.lock()?;
        if dir.is_used() && !options.resume && !options.overwrite {
            return Err(TrainError::RunExists(dir.root.clone()));
        }
        // What killed processes left (temporary files and folders) goes before anything reads.
        let mut leftovers = dir.checkpoints().remove_leftovers()?;
        leftovers.extend(
            files::remove_leftovers_of(&dir.root, &["config.yaml"]).map_err(io_err(&dir.root))?,
        );
        let resume_from = match options.resume {
            true => Some(
                dir.checkpoints()
                    .latest()?
                    .ok_or_else(|| TrainError::NothingToResume(dir.root.clone()))?,
            ),
            false => None,
        };
        // Data first: a missing or empty dataset fails before the model is built.
        let dataset = open_dataset(&config.data, config.seed)?;
        check_data_fits_model(dataset.as_ref(), config)?;
        let training = &config.training;
        let loader = DataLoader::new(
            dataset.clone(),
            training.batch_size / training.grad_accum,
            config.seed,
            config.data.workers,
            config.data.on_bad_file,
        );
        check_memory(config, options.device)?;
        let learner = Learner::new(config, options.device, Engine::Auto)?;
        let mut run = Self {
            config,
            fingerprint: model_fingerprint(&config.model),
            _lock: lock,
            progress: TrainProgress::new(training.steps, 0, config.logging.log_every),
            dir,
            device: options.device,
            learner,
            dataset,
            loader,
            events: None,
            last_loss: f64::NAN,
            skipped: 0,
            last_checkpoint: None,
            preview: None,
        };
        let mut start = "from scratch".to_string();
        if let Some(init) = &options.init {
            let weights = super::resolve_checkpoint(init)?;
            run.learner
                .load_weights(&weights.join("model.safetensors"))?;
            start = format!("from weights {}", weights.display());
        }
        let step = match &resume_from {
            Some(checkpoint) => run.resume(checkpoint)?,
            None => 0,
        };
        if step > 0 {
            start = format!("resuming at step {step}");
        }
        run.prepare_directory(options, step)?;
        run.progress = TrainProgress::new(training.steps, step, config.logging.log_every);
        if !leftovers.is_empty() {
            let names: Vec<String> = leftovers
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            run.progress.message(&format!(
                "note: removed {} temporary file(s) a killed run left in {}: {}",
                leftovers.len(),
                run.dir.root.display(),
                names.join(", ")
            ));
        }
        let bf16 = training.precision.uses_bf16(run.device);
        run.progress.message(&format!(
            "training {} ({} parameters) on {} — {start} on {:?}{}",
            config.name,
            run.learner.network().num_parameters(),
            run.dataset.describe(),
            run.device,
            if bf16 { ", bf16 autocast" } else { "" }
        ));
        Ok((run, step))
    }

    /// Continue from `checkpoint`: weights, EMA, optimizer, data position and last loss, after
    /// checking that the config is the checkpoint's in everything but what
    /// [`difflab_pipeline::config::RESUMABLE_KEYS`] lists. Returns its step.
    fn resume(&mut self, checkpoint: &Path) -> Result<u64, TrainError> {
        let state = read_state(checkpoint)?;
        let step = state["step"].as_u64().unwrap_or(0);
        if let Some(recorded) = state.get("config") {
            let differences = resume_differences(recorded, self.config);
            if !differences.is_empty() {
                let named: Vec<String> = differences
                    .iter()
                    .map(|(key, old, new)| format!("{key}: {old} → {new}"))
                    .collect();
                return Err(TrainError::ResumeMismatch {
                    path: checkpoint.to_path_buf(),
                    differences: named.join(", "),
                });
            }
        }
        if self.config.training.steps < step {
            return Err(TrainError::Config(format!(
                "training.steps = {} is below the step the run has reached ({step}, checkpoint {}); a resumed run can only go on: set training.steps to {step} or more",
                self.config.training.steps,
                checkpoint.display()
            )));
        }
        // Checkpoints written before the whole config was recorded: the model section at least.
        let found = state["model_fingerprint"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if found != self.fingerprint {
            return Err(TrainError::ConfigMismatch {
                path: checkpoint.to_path_buf(),
                found,
                expected: self.fingerprint.clone(),
            });
        }
        self.learner.restore(checkpoint)?;
        let cursor: DataCursor =
            serde_json::from_value(state["data_cursor"].clone()).map_err(|e| {
                CheckpointError::Corrupt {
                    path: checkpoint.join("state.json"),
                    reason: e.to_string(),
                }
            })?;
        self.loader.seek(cursor);
        self.last_loss = state["loss"].as_f64().unwrap_or(f64::NAN);
        Ok(step)
    }

    /// The run directory (never clobbered without `--overwrite`), its `config.yaml` (what
    /// actually runs: rewritten on resume, restored if it was deleted), and the TensorBoard
    /// writer.
    fn prepare_directory(&mut self, options: &TrainOptions, step: u64) -> Result<(), TrainError> {
        let root = &self.dir.root;
        if options.overwrite && root.join("checkpoints").exists() {
            std::fs::remove_dir_all(root.join("checkpoints")).map_err(io_err(root))?;
        }
        std::fs::create_dir_all(self.dir.samples()).map_err(io_err(&self.dir.samples()))?;
        let yaml = to_yaml(self.config);
        let path = self.dir.config();
        files::write_atomic(&path, yaml.as_bytes()).map_err(io_err(&path))?;
        if self.config.logging.tensorboard {
            let mut events = EventWriter::new(self.dir.tensorboard())?;
            events.add_text("config", &format!("```yaml\n{yaml}\n```"), step as i64)?;
            self.events = Some(events);
        }
        Ok(())
    }

    /// Optimizer step `step + 1`: [`Learner::step`] on the next batches, the NaN policy, the
    /// progress line and the loss, learning rate and gradient norm in TensorBoard.
    fn step(&mut self, step: u64) -> Result<(), TrainError> {
        let training = &self.config.training;
        let loader = &mut self.loader;
        let report = self
            .learner
            .step(step, &mut || Ok(loader.next_batch()?), &mut |_| {})?;
        match report.non_finite {
            None => self.last_loss = report.loss,
            Some(what) if training.on_nan == NanPolicy::Stop => {
                self.progress.finish();
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    what,
                });
            }
            Some(what) => {
                self.skipped += 1;
                self.progress.message(&format!(
                    "step {}: non-finite {what}, batch skipped ({} so far)",
                    step + 1,
                    self.skipped
                ));
            }
        }
        let done = step + 1;
        self.progress.update(done, report.loss, report.lr);
        if let Some(ev) = self.events.as_mut()
            && (done.is_multiple_of(self.config.logging.log_every) || done == training.steps)
            && report.loss.is_finite()
        {
            ev.add_scalar("train/loss", report.loss, done as i64)?;
            ev.add_scalar("train/lr", report.lr, done as i64)?;
            ev.add_scalar("train/grad_norm", report.grad_norm, done as i64)?;
        }
        Ok(())
    }

    /// Write the checkpoint of `step` (atomically; see [`difflab_pipeline::checkpoint`]).
    fn checkpoint(&mut self, step: u64) -> Result<PathBuf, TrainError> {
        let loss = self.last_loss;
        let state = json!({
            "step": step,
            "data_cursor": self.loader.cursor(),
            "seed": self.config.seed,
            "model_fingerprint": self.fingerprint,
            "config": self.config,
            "loss": if loss.is_finite() { json!(loss) } else { json!(null) },
            "difflab_version": env!("CARGO_PKG_VERSION"),
            "rng": "stateless: step s draws from manual_seed(mix(seed, s, micro)); data order from (seed, epoch)",
        });
        let contents = CheckpointContents {
            step,
            model: self.learner.vars(),
            ema: Some(self.learner.ema_vars()),
            optimizer: self.learner.optimizer().state_tensors(),
            state,
        };
        let dir = self
            .dir
            .checkpoints()
            .write(&contents, self.config.training.keep_last)?;
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// Evaluate the checkpoint `dir` of `step` and log the metrics; a failure is reported and
    /// training goes on.
    fn evaluate(
        &mut self,
        step: u64,
        dir: &Path,
        eval: &mut CheckpointEvaluator<'_>,
    ) -> Result<(), TrainError> {
        match eval(step, dir) {
            Ok(metrics) => {
                let text: Vec<String> =
                    metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                self.progress
                    .message(&format!("eval at step {step}: {}", text.join(", ")));
                if let Some(ev) = self.events.as_mut() {
                    for (name, value) in &metrics {
                        ev.add_scalar(&format!("eval/{name}"), *value, step as i64)?;
                    }
                }
            }
            Err(e) => self
                .progress
                .message(&format!("eval at step {step} failed: {e}")),
        }
        Ok(())
    }

    /// The preview of `step` (see [`write_preview`]), added to TensorBoard.
    fn preview(&mut self, step: u64) -> Result<(), TrainError> {
        let preview = write_preview(
            &self.learner,
            self.config,
            self.dataset.as_ref(),
            step,
            &self.dir,
            self.device,
        )?;
        match preview {
            Preview::Grid(path) => {
                if let (Some(ev), Ok(img)) = (self.events.as_mut(), image::open(&path)) {
                    ev.add_image("samples", &img, step as i64)?;
                }
                self.preview = Some(path);
            }
            Preview::Points => {}
            // A diverged model should not cost the user the run: the checkpoint is written.
            Preview::Skipped(why) => self
                .progress
                .message(&format!("preview at step {step} skipped: {why}")),
        }
        Ok(())
    }

    /// Flush the logs and report what the run did.
    fn finish(mut self, step: u64, interrupted: bool) -> Result<TrainOutcome, TrainError> {
        if let Some(ev) = self.events.as_mut() {
            ev.flush()?;
        }
        self.progress.finish();
        let checkpoint = match self.last_checkpoint {
            Some(c) => c,
            // Resumed a run that was already complete: point at its latest checkpoint.
            None => self
                .dir
                .checkpoints()
                .latest()?
                .ok_or_else(|| TrainError::NothingToResume(self.dir.root.clone()))?,
        };
        Ok(TrainOutcome {
            step,
            interrupted,
            checkpoint,
            last_loss: self.last_loss,
            skipped_batches: self.skipped,
            skipped_files: self.loader.skipped(),
            preview: self.preview,
        })
    }
}
