//! `difflab sample`: generate images with a run, a checkpoint, a diffusers model, an expert
//! ensemble or a cascade, with any sampler, and record how.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_pipeline::DeviceSpec;
use difflab_pipeline::checkpoint::resolve_checkpoint;
use difflab_samplers::{SamplerConfig, SamplerKeys, SamplerKind};
use difflab_sampling::cascade::CliStageSettings;
use difflab_sampling::{
    DiffusersModelSpec, NoiseMode, OutputMode, SampleRequest, SampleSource, WeightsKind,
    sample_to_folder,
};
use difflab_schedulers::{BetaScheduleKind, Prediction, ScheduleConfig, TimestepSpacing};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `difflab sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A difflab run directory: its config.yaml and latest checkpoint.
    #[arg(long, value_name = "DIR", group = "source")]
    run: Option<PathBuf>,
    /// A checkpoint directory (RUN/checkpoints/step-N or RUN/checkpoints/latest); with --run,
    /// a checkpoint of that run: `step-N`, `latest`, or its path.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["diffusers_model", "config"])]
    checkpoint: Option<PathBuf>,
    /// A diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, value_name = "DIR", group = "source")]
    diffusers_model: Option<PathBuf>,
    /// A cascade manifest (`stages:`) or an expert-ensemble manifest (`experts:`).
    #[arg(long, value_name = "MANIFEST", group = "source")]
    config: Option<PathBuf>,
    /// With a cascade manifest: the stages to run, in order, e.g. `base+sr` or `sr`.
    #[arg(long, requires = "config")]
    cascade: Option<String>,
    /// The EMA weights (default).
    #[arg(long, conflicts_with = "raw")]
    ema: bool,
    /// The raw weights instead of the EMA weights.
    #[arg(long)]
    raw: bool,
    /// ddim, ddpm or cold (default: the run's sampler; ddim for diffusers models). Switching
    /// sampler keeps the run's settings that the new one takes (steps, spacing, clipping).
    #[arg(long, value_parser = parse::<SamplerKind>)]
    sampler: Option<SamplerKind>,
    /// Denoiser evaluations (default: the run's; 50 for ddim, T for ddpm).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM η (0 = deterministic); ddim only.
    #[arg(long, value_parser = super::finite)]
    eta: Option<f64>,
    /// leading, trailing or linspace (ddim, ddpm).
    #[arg(long, value_parser = parse::<TimestepSpacing>)]
    spacing: Option<TimestepSpacing>,
    /// Added to leading-spaced timesteps (ddim, ddpm).
    #[arg(long)]
    steps_offset: Option<usize>,
    /// Do not clamp the predicted x₀ to [-1, 1].
    #[arg(long)]
    no_clip_sample: bool,
    /// Classifier-free guidance weight w (1 = none; needs a model trained with label dropout).
    #[arg(long, value_parser = super::finite)]
    guidance: Option<f64>,
    /// Class of every image (class-conditional models; default: cycle through the classes).
    #[arg(long)]
    class: Option<i64>,
    /// Label vector of every image (multi-hot models), comma-separated, e.g. `1,0,0,1`.
    #[arg(long, value_delimiter = ',', value_parser = super::finite_f32)]
    labels: Option<Vec<f32>>,
    /// Input images (a file or a folder): the low-resolution input of a first SR stage, the
    /// conditioning image of an image-to-image model, or the clean images a cold-diffusion run
    /// starts from (default for cold runs: its training data).
    #[arg(long, value_name = "FILE_OR_DIR")]
    cond_image: Option<PathBuf>,
    /// SR stages: the augmentation level of the low-resolution input, in [0, 1].
    #[arg(long, value_parser = super::finite)]
    noise_level: Option<f64>,
    /// Cascades: load each stage only while it runs (one stage's weights on the device).
    #[arg(long)]
    offload: bool,
    /// Number of images.
    #[arg(short = 'n', long = "num-images", default_value_t = 16)]
    num_images: usize,
    /// Images per forward pass (bounds memory; default: all).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// per-image (each image its own stream: the same images whatever --batch-size) or
    /// torch-global (`torch.manual_seed(seed)` then draws in order, as diffusers pipelines).
    /// Default: per-image, except torch-global for --diffusers-model.
    #[arg(long, value_parser = clap::value_parser!(NoiseMode))]
    noise: Option<NoiseMode>,
    /// Also write trajectory.png: x_t and the predicted x₀ over the steps for the first images.
    #[arg(long)]
    save_trajectory: bool,
    /// Output folder: 000000.png, …, grid.png, sample.json (cascades: stages/<name>/ too).
    /// It must be absent or empty unless --overwrite or --resume is given.
    #[arg(long, default_value = "samples")]
    out: PathBuf,
    /// Replace what a previous `difflab sample` wrote into --out (only the files its
    /// sample.json lists; anything else stays).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Finish an interrupted job in --out: keep the images it made, make the rest (the same
    /// command; per-image noise).
    #[arg(long)]
    resume: bool,
    /// Diffusers models: what the model predicts (eps, x0 or v).
    #[arg(long, default_value = "eps", value_parser = parse::<Prediction>)]
    prediction: Prediction,
    /// Diffusers models: the training noise schedule (default linear 1e-4..0.02).
    #[arg(long, default_value = "linear", value_parser = parse::<BetaScheduleKind>)]
    beta_schedule: BetaScheduleKind,
    /// Diffusers models: β_1 of the training schedule.
    #[arg(long, value_parser = super::finite)]
    beta_start: Option<f64>,
    /// Diffusers models: β_T of the training schedule.
    #[arg(long, value_parser = super::finite)]
    beta_end: Option<f64>,
    /// Diffusers models: training timesteps T.
    #[arg(long, default_value_t = 1000)]
    train_timesteps: usize,
}

fn parse<T: std::str::FromStr<Err = difflab_schedulers::ScheduleError>>(
    s: &str,
) -> Result<T, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
}

impl SampleArgs {
    fn weights(&self) -> WeightsKind {
        if self.raw {
            WeightsKind::Raw
        } else {
            WeightsKind::Ema
        }
    }

    fn cli_settings(&self) -> CliStageSettings {
        CliStageSettings {
            sampler: SamplerKeys {
                kind: self.sampler,
                steps: self.steps,
                eta: self.eta,
                spacing: self.spacing,
                steps_offset: self.steps_offset,
                clip_sample: self.no_clip_sample.then_some(false),
                ..SamplerKeys::default()
            },
            guidance: self.guidance,
            class: self.class,
            labels: self.labels.clone(),
            noise_level: self.noise_level,
        }
    }
}

impl SampleArgs {
    /// The run or checkpoint to sample: `--run R` (its latest checkpoint), `--checkpoint C`, or
    /// both (`C` a checkpoint of `R`: `step-N`, `latest` or a path inside `R`).
    fn checkpoint_path(&self) -> Result<PathBuf> {
        let (run, checkpoint) = match (&self.run, &self.checkpoint) {
            (Some(run), Some(c)) => (run, c),
            (Some(path), None) | (None, Some(path)) => return Ok(path.clone()),
            (None, None) => bail!("--run or --checkpoint"),
        };
        let inside = run.join("checkpoints").join(checkpoint);
        let path = if checkpoint.is_relative() && inside.exists() {
            inside
        } else {
            checkpoint.clone()
        };
        let resolved = resolve_checkpoint(&path).with_context(|| {
            format!(
                "--checkpoint {} of --run {}",
                checkpoint.display(),
                run.display()
            )
        })?;
        let canonical = |p: &std::path::Path| {
            p.canonicalize()
                .with_context(|| format!("reading {}", p.display()))
        };
        if !canonical(&resolved)?.starts_with(canonical(run)?) {
            bail!(
                "--checkpoint {} is not a checkpoint of --run {} (it is {}); pass only --checkpoint to sample another run's checkpoint",
                checkpoint.display(),
                run.display(),
                resolved.display()
            );
        }
        Ok(resolved)
    }

    /// The request these arguments make.
    fn request(&self) -> Result<SampleRequest> {
        let source = if let Some(dir) = &self.diffusers_model {
            let schedule = ScheduleConfig {
                beta_start: self.beta_start,
                beta_end: self.beta_end,
                ..ScheduleConfig::new(self.beta_schedule, self.train_timesteps)
            };
            schedule
                .build()
                .context("--beta-schedule / --beta-start / --beta-end")?;
            let spec = DiffusersModelSpec {
                schedule,
                prediction: self.prediction,
                sampler: SamplerConfig::new(SamplerKind::Ddim),
            };
            SampleSource::Diffusers {
                dir: dir.clone(),
                spec,
            }
        } else if self.run.is_some() || self.checkpoint.is_some() {
            SampleSource::Run {
                path: self.checkpoint_path()?,
                weights: self.weights(),
            }
        } else if let Some(path) = &self.config {
            SampleSource::Manifest {
                path: path.clone(),
                cascade: self.cascade.clone(),
            }
        } else {
            bail!(
                "say what to sample from: --run DIR, --checkpoint DIR, --diffusers-model DIR or --config MANIFEST"
            );
        };
        Ok(SampleRequest {
            source,
            settings: self.cli_settings(),
            cond_image: self.cond_image.clone(),
            num_images: self.num_images,
            batch_size: self.batch_size,
            seed: self.seed,
            noise: self.noise,
            trajectory: self.save_trajectory,
            offload: self.offload,
            out: self.out.clone(),
            command: std::env::args().collect(),
            output: match (self.overwrite, self.resume) {
                (true, _) => OutputMode::Overwrite,
                (_, true) => OutputMode::Resume,
                _ => OutputMode::Fresh,
            },
        })
    }
}

/// Run the command.
pub fn run(args: &SampleArgs, device: DeviceSpec) -> Result<()> {
    let device = device.resolve()?;
    let request = args.request()?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})")
            .expect("valid template"),
    );
    let summary = sample_to_folder(&request, device, &mut |stage, b, n, step| {
        if step.index == 0 && b == 0 {
            bar.set_length((step.total * n) as u64);
            bar.set_position(0);
        }
        bar.set_message(format!("{stage}: batch {}/{n}", b + 1));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let steps: Vec<String> = summary
        .stages
        .iter()
        .map(|(name, n)| format!("{name}: {n} steps"))
        .collect();
    eprintln!(
        "wrote {} samples, grid and sample.json to {} ({})",
        args.num_images,
        args.out.display(),
        steps.join(", ")
    );
    Ok(())
}
