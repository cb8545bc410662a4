//! The training-parity harness: difflab's step against PyTorch's on the same weights and the
//! same batches.
//!
//! 1. [`record`] builds the model a config describes (its seed's weights), runs `steps`
//!    optimizer steps of the trainer's own [`Learner::step`] on the config's data, and writes
//!    the run's initial weights, every micro-batch's inputs (x₀, t, ε, conditioning), and what
//!    difflab computed: losses, gradient norms, the step-1 gradients, the weights and EMA after
//!    the last step.
//! 2. `scripts/parity/torch_reference.py DIR` (PyTorch + diffusers) loads the same weights by
//!    name into diffusers' `UNet2DModel` (or a PyTorch port of the MLP), replays the same
//!    inputs through `DDPMScheduler.add_noise`/`get_velocity`, `F.mse_loss`, Min-SNR-γ as
//!    diffusers' training scripts weight it, `clip_grad_norm_`, `torch.optim.AdamW`,
//!    `get_scheduler` and `EMAModel`, and writes the same quantities as `torch.safetensors`.
//! 3. [`check`] replays the recorded inputs with [`Learner::replay`] (any engine, any memory
//!    format) from the recorded weights and compares every quantity with PyTorch's.
//!
//! Errors are relative: `‖a − b‖ / ‖b‖` per tensor, and for the weights after the last step,
//! per tensor relative to the distance they moved, `‖a − b‖ / ‖b − w₀‖`. A parameter whose
//! step-1 gradient in PyTorch is zero up to round-off (`‖g‖ ≤ 10⁻⁷·‖g_all‖`: an attention's key
//! bias, which the softmax cannot see) is listed but not compared: both frameworks' gradients
//! there are rounding noise, which Adam then turns into full-size steps of random sign.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use difflab_models::DiffusersUNetConfig;
use serde_json::json;
use tch::{Device, Kind, Tensor, nn::VarStore};

use super::{Engine, Learner, StepEvent, StepInputs, TrainError};
use difflab_data::{DataLoader, open_dataset};
use difflab_pipeline::checkpoint::CheckpointError;
use difflab_pipeline::checkpoint::safetensors::write_safetensors;
use difflab_pipeline::config::{Override, load_recorded_config, to_yaml};
use difflab_pipeline::{ExperimentConfig, ModelConfig};

/// Files of a parity directory.
const RECIPE: &str = "recipe.json";
const CONFIG: &str = "config.yaml";
const INIT: &str = "init.safetensors";
const INPUTS: &str = "inputs.safetensors";
const DIFFLAB: &str = "difflab.safetensors";
/// What `scripts/parity/torch_reference.py` writes.
pub const TORCH: &str = "torch.safetensors";

/// Why recording or checking failed.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// Building or stepping the model failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A parity directory is incomplete or inconsistent.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(path: &Path, reason: impl Into<String>) -> ParityError {
    ParityError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The variables of `vs` as contiguous CPU copies, by name.
fn snapshot(vs: &VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let _guard = tch::no_grad_guard();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    vars.into_iter()
        .map(|(name, t)| {
            let t = t.to_device(Device::Cpu).contiguous().copy();
            (format!("{prefix}{name}"), t)
        })
        .collect()
}

/// The gradients of `vs`'s trainable variables as CPU copies, `grad.<name>`.
fn gradients(vs: &VarStore) -> Vec<(String, Tensor)> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    vars.into_iter()
        .filter(|(_, t)| t.requires_grad() && t.grad().defined())
        .map(|(name, t)| {
            let g = t.grad().to_device(Device::Cpu).contiguous().copy();
            (format!("grad.{name}"), g)
        })
        .collect()
}

/// What a run of `steps` steps computed, as named tensors: `loss` and `grad_norm` `[steps]`
/// (f64), `grad.<name>` (step 1, before clipping), `weight.<name>` and `ema.<name>` (after
/// the last step).
struct Trajectory {
    tensors: Vec<(String, Tensor)>,
}

/// Run `steps` steps of `learner`, each from `micro_batches(step, learner)`, recording what
/// [`Trajectory`] holds and, through `inputs`, each micro-batch's inputs.
fn run_steps(
    learner: &mut Learner,
    steps: u64,
    mut step_fn: impl FnMut(
        &mut Learner,
        u64,
        &mut dyn FnMut(StepEvent<'_>),
    ) -> Result<super::StepReport, TrainError>,
) -> Result<Trajectory, ParityError> {
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let mut grads = Vec::new();
    for step in 0..steps {
        let mut observe = |event: StepEvent<'_>| {
            if let (0, StepEvent::Gradients(vs)) = (step, event) {
                grads = gradients(vs);
            }
        };
        let report = step_fn(learner, step, &mut observe)?;
        if let Some(what) = report.non_finite {
            return Err(TrainError::NonFinite {
                step: step + 1,
                what,
            }
            .into());
        }
        losses.push(report.loss);
        norms.push(report.grad_norm);
    }
    let mut tensors = vec![
        ("loss".to_string(), Tensor::from_slice(&losses)),
        ("grad_norm".to_string(), Tensor::from_slice(&norms)),
    ];
    tensors.extend(grads);
    tensors.extend(snapshot(learner.vars(), "weight."));
    tensors.extend(snapshot(learner.ema_vars(), "ema."));
    Ok(Trajectory { tensors })
}

/// Check that `config` can be replayed by the PyTorch reference: Gaussian diffusion, no
/// dropout, a UNet diffusers can express or the MLP, an EMA and a learning-rate schedule
/// diffusers has.
fn check_reproducible(config: &ExperimentConfig) -> Result<Option<DiffusersUNetConfig>, String> {
    let training = &config.training;
    if config.process != super::ProcessConfig::Gaussian {
        return Err("process: only Gaussian diffusion has a PyTorch reference here".into());
    }
    if training.ema.warmup.then_some(()).is_none() && training.ema.decay > 0.0 {
        return Err("training.ema.warmup: false has no diffusers EMAModel equivalent (its non-warmup decay is (1+s)/(10+s)); use warmup or decay 0".into());
    }
    if training.ema.update_every != 1 {
        return Err("training.ema.update_every must be 1 (EMAModel averages every step)".into());
    }
    let lr = &training.lr_schedule;
    if lr.schedule == crate::optim::LrSchedule::Step || lr.min_lr_ratio != 0.0 {
        return Err("training.lr_schedule: diffusers' get_scheduler has constant or cosine (to 0) after warmup".into());
    }
    match &config.model {
        ModelConfig::Unet(u) => {
            if u.dropout > 0.0 {
                return Err("model.dropout must be 0 (dropout draws differ between runs)".into());
            }
            let size = config.data.resolution;
            DiffusersUNetConfig::from_unet_config(u, size)
                .map(Some)
                .map_err(|e| format!("model: {e}"))
        }
        ModelConfig::Mlp(_) => Ok(None),
        ModelConfig::SrUnet(_) => Err("model.kind: sr_unet has no PyTorch reference here".into()),
    }
}

/// Record `steps` optimizer steps of `config` (its seed's weights, its data) into `dir`:
/// `recipe.json` (the config and, for a UNet, its diffusers `config.json`), `init.safetensors`,
/// `inputs.safetensors` (`step<s>.micro<m>.<x0|t|noise|…>`) and `difflab.safetensors` (see
/// the [module docs](self)). Runs on the CPU.
pub fn record(config: &ExperimentConfig, steps: u64, dir: &Path) -> Result<(), ParityError> {
    let diffusers = check_reproducible(config).map_err(|e| invalid(&dir.join(RECIPE), e))?;
    if steps == 0 {
        return Err(invalid(&dir.join(RECIPE), "at least one step"));
    }
    std::fs::create_dir_all(dir).map_err(|error| CheckpointError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let device = Device::Cpu;
    let mut learner = Learner::new(config, device, Engine::Auto)?;
    write_safetensors(&dir.join(INIT), &snapshot(learner.vars(), ""))?;
    let dataset = open_dataset(&config.data, config.seed).map_err(TrainError::from)?;
    let training = &config.training;
    let micro = training.batch_size / training.grad_accum;
    let mut loader = DataLoader::new(
        dataset,
        micro,
        config.seed,
        config.data.workers,
        config.data.on_bad_file,
    );
    let mut inputs = Vec::new();
    let trajectory = run_steps(&mut learner, steps, |learner, step, observe| {
        let mut count = 0;
        learner.step(step, &mut || Ok(loader.next_batch()?), &mut |event| {
            if let StepEvent::Inputs(given) = &event {
                inputs.extend(given.to_named(&format!("step{step}.micro{count}.")));
                count += 1;
            }
            observe(event);
        })
    })?;
    write_safetensors(&dir.join(INPUTS), &inputs)?;
    write_safetensors(&dir.join(DIFFLAB), &trajectory.tensors)?;
    let recipe = json!({
        "steps": steps,
        "engine": learner.engine_name(),
        "config": config,
        "diffusers_unet": diffusers.map(|d| d.to_json()),
    });
    let text = serde_json::to_string_pretty(&recipe).expect("configs serialise") + "\n";
    for (name, text) in [(RECIPE, text), (CONFIG, to_yaml(config))] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|error| CheckpointError::Io { path, error })?;
    }
    Ok(())
}

/// How close difflab must come to PyTorch.
#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    /// Relative error of each step's loss and gradient norm.
    pub loss: f64,
    /// Relative error of each step-1 gradient, per tensor.
    pub gradient: f64,
    /// Error of each weight (and EMA weight) after the last step, per tensor, relative to how
    /// far the reference's moved from its initial value.
    pub update: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            loss: 1e-5,
            gradient: 1e-4,
            update: 2e-3,
        }
    }
}

/// One compared quantity: its largest error and where.
#[derive(Clone, Debug)]
pub struct ParityRow {
    /// `loss`, `grad_norm`, `gradients (step 1)`, `weights (step K)`, `ema (step K)`.
    pub quantity: &'static str,
    /// The largest relative error over its tensors (or steps).
    pub worst: f64,
    /// The tensor (or step) where it occurs.
    pub at: String,
    /// Its tolerance.
    pub tolerance: f64,
}

/// What [`check`] found.
#[derive(Clone, Debug)]
pub struct ParityReport {
    /// The engine difflab replayed with.
    pub engine: &'static str,
    /// Steps replayed.
    pub steps: u64,
    /// One row per quantity.
    pub rows: Vec<ParityRow>,
    /// Parameters not compared: their gradient is zero up to round-off (see the module docs).
    pub null: Vec<String>,
}

impl ParityReport {
    /// Whether every quantity is within its tolerance.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.worst <= r.tolerance)
    }

    /// A Markdown table of the rows.
    pub fn table(&self) -> String {
        let mut out = String::from("| quantity | worst relative error | at | tolerance | |\n");
        out += "|---|---|---|---|---|\n";
        for r in &self.rows {
            let mark = if r.worst <= r.tolerance { "ok" } else { "FAIL" };
            out += &format!(
                "| {} | {:.2e} | `{}` | {:.0e} | {mark} |\n",
                r.quantity, r.worst, r.at, r.tolerance
            );
        }
        if !self.null.is_empty() {
            out += &format!(
                "\nNot compared (gradient zero up to round-off in PyTorch): {}\n",
                self.null.join(", ")
            );
        }
        out
    }
}

fn read_named(path: &Path) -> Result<HashMap<String, Tensor>, ParityError> {
    let tensors = Tensor::read_safetensors(path).map_err(|e| invalid(path, e.to_string()))?;
    Ok(tensors.into_iter().collect())
}

/// `‖a − b‖ / ‖scale‖` in f64, or `/ ‖b‖` where `scale` is zero (0 when `a = b`).
fn relative(a: &Tensor, b: &Tensor, scale: &Tensor) -> f64 {
    let norm = |t: &Tensor| t.to_kind(Kind::Double).norm().double_value(&[]);
    let diff = norm(&(a.to_kind(Kind::Double) - b.to_kind(Kind::Double)));
    match (diff, norm(scale)) {
        (0.0, _) => 0.0,
        (d, s) if s > 0.0 => d / s,
        (d, _) => d / norm(b),
    }
}

/// The largest [`relative`] error over the tensors named `<prefix><name>` in `ours`, each
/// against the same name in `reference`, scaled by `scale(name, reference)`; parameters in
/// `skip` are left out.
#[allow(clippy::too_many_arguments)]
fn worst_of(
    quantity: &'static str,
    prefix: &str,
    ours: &HashMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
    tolerance: f64,
    scale: impl Fn(&str, &Tensor) -> Tensor,
    skip: &[String],
    file: &Path,
) -> Result<ParityRow, ParityError> {
    let mut row = ParityRow {
        quantity,
        worst: 0.0,
        at: String::new(),
        tolerance,
    };
    let mut names: Vec<&String> = reference.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    if names.is_empty() {
        return Err(invalid(file, format!("no `{prefix}*` tensors")));
    }
    for name in names {
        if skip.iter().any(|s| s == name.trim_start_matches(prefix)) {
            continue;
        }
        let want = &reference[name];
        let got = ours
            .get(name)
            .ok_or_else(|| invalid(file, format!("difflab has no `{name}`")))?;
        if got.size() != want.size() {
            return Err(invalid(
                file,
                format!(
                    "`{name}`: difflab {:?}, PyTorch {:?}",
                    got.size(),
                    want.size()
                ),
            ));
        }
        let error = relative(got, want, &scale(name, want));
        if error > row.worst || row.at.is_empty() {
            row.worst = row.worst.max(error);
            row.at = name.trim_start_matches(prefix).to_string();
        }
    }
    Ok(row)
}

/// The largest relative error of a per-step series, naming the step.
fn worst_step(quantity: &'static str, ours: &Tensor, want: &Tensor, tolerance: f64) -> ParityRow {
    let (ours, want) = (
        Vec::<f64>::try_from(ours.to_kind(Kind::Double)).unwrap_or_default(),
        Vec::<f64>::try_from(want.to_kind(Kind::Double)).unwrap_or_default(),
    );
    let mut row = ParityRow {
        quantity,
        worst: if ours.len() == want.len() {
            0.0
        } else {
            f64::INFINITY
        },
        at: "step 1".into(),
        tolerance,
    };
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        let error = if a == b { 0.0 } else { (a - b).abs() / b.abs() };
        // NaN counts as the worst.
        if error.is_nan() || error > row.worst {
            row.worst = error;
            row.at = format!("step {}", i + 1);
        }
    }
    row
}

/// What to replay with.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// The step engine.
    pub engine: Engine,
    /// Overrides of the recorded config (e.g. `training.memory_format=contiguous`).
    pub overrides: Vec<Override>,
    /// How close to PyTorch.
    pub tolerances: Tolerances,
}

/// Replay the run recorded in `dir` (see [`record`]) with difflab and compare it with what
/// PyTorch computed (`torch.safetensors`, written by `scripts/parity/torch_reference.py`).
pub fn check(dir: &Path, options: &CheckOptions) -> Result<ParityReport, ParityError> {
    let recipe_path = dir.join(RECIPE);
    let text = std::fs::read_to_string(&recipe_path).map_err(|error| CheckpointError::Io {
        path: recipe_path.clone(),
        error,
    })?;
    let recipe: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(&recipe_path, e.to_string()))?;
    let steps = recipe["steps"]
        .as_u64()
        .ok_or_else(|| invalid(&recipe_path, "no `steps`"))?;
    let config_path = dir.join(CONFIG);
    let config = load_recorded_config(&config_path, &options.overrides)
        .map_err(|e| invalid(&config_path, e.to_string()))?;
    let mut learner = Learner::new(&config, Device::Cpu, options.engine)?;
    // What difflab draws from the seed now, against what it recorded (which PyTorch checked).
    let init = read_named(&dir.join(INIT))?;
    let drawn_now = snapshot(learner.vars(), "")
        .into_iter()
        .map(|(name, t)| match init.get(&name) {
            Some(recorded) if recorded.size() == t.size() => {
                (&t - recorded).abs().max().double_value(&[])
            }
            _ => f64::INFINITY,
        })
        .fold(0.0, f64::max);
    learner.load_weights(&dir.join(INIT))?;
    let inputs_path = dir.join(INPUTS);
    let named = read_named(&inputs_path)?;
    let accum = config.training.grad_accum;
    let trajectory = run_steps(&mut learner, steps, |learner, step, observe| {
        let inputs = (0..accum)
            .map(|m| {
                StepInputs::from_named(&named, &format!("step{step}.micro{m}."), Device::Cpu)
                    .ok_or_else(|| {
                        TrainError::Config(format!(
                            "{}: step {step} micro-batch {m} missing",
                            inputs_path.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        learner.replay(step, &inputs, observe)
    })?;
    let ours: HashMap<String, Tensor> = trajectory.tensors.into_iter().collect();
    let torch_path = dir.join(TORCH);
    let reference = read_named(&torch_path)?;
    let t = options.tolerances;
    let get = |name: &str| {
        reference
            .get(name)
            .ok_or_else(|| invalid(&torch_path, format!("no `{name}`")))
    };
    let moved = |prefix: &'static str| {
        let init = &init;
        move |name: &str, want: &Tensor| match init.get(name.trim_start_matches(prefix)) {
            Some(w0) => want - w0,
            None => want.shallow_clone(),
        }
    };
    // Parameters whose PyTorch gradient is round-off: not compared.
    let norm = |t: &Tensor| t.to_kind(Kind::Double).norm().double_value(&[]);
    let grads: Vec<(&String, f64)> = reference
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .map(|(k, g)| (k, norm(g)))
        .collect();
    let total = grads.iter().map(|(_, n)| n * n).sum::<f64>().sqrt();
    let mut null: Vec<String> = grads
        .iter()
        .filter(|(_, n)| *n <= 1e-7 * total)
        .map(|(k, _)| k.trim_start_matches("grad.").to_string())
        .collect();
    null.sort();
    let mut rows = Vec::new();
    if let Some(diff) = reference.get("init_max_abs_diff") {
        rows.push(ParityRow {
            quantity: "recorded initial weights vs torch.manual_seed(seed)",
            worst: diff.double_value(&[0]),
            at: "largest absolute difference".into(),
            tolerance: 0.0,
        });
    }
    rows.push(ParityRow {
        quantity: "initial weights difflab draws now vs recorded",
        worst: drawn_now,
        at: "largest absolute difference".into(),
        tolerance: 0.0,
    });
    rows.extend([
        worst_step("loss", &ours["loss"], get("loss")?, t.loss),
        worst_step("grad_norm", &ours["grad_norm"], get("grad_norm")?, t.loss),
        worst_of(
            "gradients (step 1)",
            "grad.",
            &ours,
            &reference,
            t.gradient,
            |_, want| want.shallow_clone(),
            &null,
            &torch_path,
        )?,
        worst_of(
            "weights (last step)",
            "weight.",
            &ours,
            &reference,
            t.update,
            moved("weight."),
            &null,
            &torch_path,
        )?,
        worst_of(
            "ema (last step)",
            "ema.",
            &ours,
            &reference,
            t.update,
            moved("ema."),
            &null,
            &torch_path,
        )?,
    ]);
    Ok(ParityReport {
        engine: learner.engine_name(),
        steps,
        rows,
        null,
    })
}
