//! `difflab sample`: generate images with a run, a checkpoint, a diffusers model, an expert
//! ensemble or a cascade, with any sampler, and record how.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_data::images::{grid_columns, save_grid, save_images};
use difflab_pipeline::DeviceSpec;
use difflab_samplers::{DdimConfig, SamplerConfig, SamplerKeys, SamplerKind};
use difflab_sampling::cascade::{
    CascadeManifest, CliStageSettings, PlannedStage, StageSpec, StageWeights, run_cascade,
};
use difflab_sampling::{
    DiffusersModelSpec, EnsembleSpec, JobOptions, ModelInfo, NoiseMode, StageModel, StageOutput,
    WeightsKind, load_diffusers_model, load_input_images,
};
use difflab_schedulers::{BetaScheduleKind, Prediction, ScheduleConfig, TimestepSpacing};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Arguments of `difflab sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A difflab run directory: its config.yaml and latest checkpoint.
    #[arg(long, value_name = "DIR", group = "source")]
    run: Option<PathBuf>,
    /// A checkpoint directory (RUN/checkpoints/step-N or RUN/checkpoints/latest).
    #[arg(long, value_name = "DIR", group = "source")]
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
    #[arg(long)]
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
    #[arg(long)]
    guidance: Option<f64>,
    /// Class of every image (class-conditional models; default: cycle through the classes).
    #[arg(long)]
    class: Option<i64>,
    /// Label vector of every image (multi-hot models), comma-separated, e.g. `1,0,0,1`.
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<f32>>,
    /// Input images (a file or a folder): the low-resolution input of a first SR stage, the
    /// conditioning image of an image-to-image model, or the clean images a cold-diffusion run
    /// starts from (default for cold runs: its training data).
    #[arg(long, value_name = "FILE_OR_DIR")]
    cond_image: Option<PathBuf>,
    /// SR stages: the augmentation level of the low-resolution input, in [0, 1].
    #[arg(long)]
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
    #[arg(long, default_value = "samples")]
    out: PathBuf,
    /// Diffusers models: what the model predicts (eps, x0 or v).
    #[arg(long, default_value = "eps", value_parser = parse::<Prediction>)]
    prediction: Prediction,
    /// Diffusers models: the training noise schedule (default linear 1e-4..0.02).
    #[arg(long, default_value = "linear", value_parser = parse::<BetaScheduleKind>)]
    beta_schedule: BetaScheduleKind,
    /// Diffusers models: β_1 of the training schedule.
    #[arg(long)]
    beta_start: Option<f64>,
    /// Diffusers models: β_T of the training schedule.
    #[arg(long)]
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

/// The stages to run and how.
struct Plan {
    stages: Vec<PlannedStage>,
    preloaded: Vec<StageWeights>,
    offload: bool,
    noise: NoiseMode,
}

/// Does this YAML file hold a cascade (`stages:`) or an ensemble (`experts:`)?
fn manifest_kind(path: &Path) -> Result<&'static str> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let top: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match (top.contains_key("stages"), top.contains_key("experts")) {
        (true, false) => Ok("cascade"),
        (false, true) => Ok("ensemble"),
        _ => bail!(
            "{}: not a cascade manifest (top-level `stages:`) or an ensemble manifest (`experts:`)",
            path.display()
        ),
    }
}

fn plan(args: &SampleArgs, device: tch::Device) -> Result<Plan> {
    let single = |stages: Vec<PlannedStage>, noise| Plan {
        preloaded: Vec::new(),
        stages,
        offload: args.offload,
        noise,
    };
    let default_noise = args.noise.unwrap_or_default();
    if let Some(dir) = &args.diffusers_model {
        let schedule = ScheduleConfig {
            beta_start: args.beta_start,
            beta_end: args.beta_end,
            ..ScheduleConfig::new(args.beta_schedule, args.train_timesteps)
        };
        schedule
            .build()
            .context("--beta-schedule / --beta-start / --beta-end")?;
        let spec = DiffusersModelSpec {
            schedule,
            prediction: args.prediction,
            sampler: SamplerConfig::Ddim(DdimConfig {
                spacing: TimestepSpacing::Leading,
                ..DdimConfig::default()
            }),
        };
        let model = load_diffusers_model(dir, spec, device)
            .with_context(|| format!("loading diffusers model {}", dir.display()))?;
        let stage = PlannedStage::of("model", StageSpec::Single(model.info.clone()));
        return Ok(Plan {
            stages: vec![stage],
            preloaded: vec![StageWeights::Loaded(StageModel::Single(model))],
            offload: false,
            noise: args.noise.unwrap_or(NoiseMode::TorchGlobal),
        });
    }
    if let Some(path) = args.run.as_ref().or(args.checkpoint.as_ref()) {
        let info = ModelInfo::from_run(path, args.weights())?;
        return Ok(single(
            vec![PlannedStage::of("model", StageSpec::Single(info))],
            default_noise,
        ));
    }
    let Some(manifest) = &args.config else {
        bail!(
            "say what to sample from: --run DIR, --checkpoint DIR, --diffusers-model DIR or --config MANIFEST"
        );
    };
    match manifest_kind(manifest)? {
        "ensemble" => {
            if args.cascade.is_some() {
                bail!(
                    "--cascade applies to cascade manifests; {} is an ensemble manifest",
                    manifest.display()
                );
            }
            let spec = StageSpec::Ensemble(EnsembleSpec::open(manifest)?);
            Ok(single(
                vec![PlannedStage::of("ensemble", spec)],
                default_noise,
            ))
        }
        _ => {
            let cascade = CascadeManifest::open(manifest)?;
            let stages = cascade.plan(manifest, args.cascade.as_deref())?;
            Ok(Plan {
                stages,
                preloaded: Vec::new(),
                offload: args.offload || cascade.offload,
                noise: default_noise,
            })
        }
    }
}

/// Run the command.
pub fn run(args: &SampleArgs, device: DeviceSpec) -> Result<()> {
    if args.num_images == 0 {
        bail!("-n/--num-images must be at least 1");
    }
    let batch = args.batch_size.unwrap_or(args.num_images);
    if batch == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = device.resolve()?;
    let Plan {
        stages,
        preloaded,
        offload,
        noise,
    } = plan(args, device)?;
    if args.noise_level.is_some() && stages.iter().all(|s| s.spec.info().lowres.is_none()) {
        bail!("--noise-level applies to super-resolution stages, and none is being sampled");
    }
    // Input images are read at the size the first stage wants them.
    let input = match &args.cond_image {
        None => None,
        Some(path) => {
            let info = stages[0].spec.info();
            let shape = match &info.lowres {
                Some(low) => low.shape.clone(),
                None if info.conditioning.cond_channels > 0 => vec![
                    info.conditioning.cond_channels,
                    info.shape[1],
                    info.shape[2],
                ],
                None if info.shape.len() == 3 => info.shape.clone(),
                None => bail!("--cond-image: {} does not take images", info.label),
            };
            Some(load_input_images(path, shape[2], shape[0])?)
        }
    };
    let options = JobOptions {
        num_images: args.num_images,
        batch_size: batch,
        seed: args.seed,
        noise,
        trajectory: args.save_trajectory,
    };
    let cli = args.cli_settings();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})")
            .expect("valid template"),
    );
    let last = stages.len() - 1;
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    let out = &args.out;
    let outputs = run_cascade(
        &stages,
        preloaded,
        &cli,
        input,
        &options,
        offload,
        device,
        &mut |stage, b, n, step| {
            if step.index == 0 && b == 0 {
                bar.set_length((step.total * n) as u64);
                bar.set_position(0);
            }
            bar.set_message(format!("{stage}: batch {}/{n}", b + 1));
            bar.inc(1);
        },
        &mut |i, output| {
            let dir = if i == last {
                out.clone()
            } else {
                out.join("stages").join(&names[i])
            };
            save_output(output, &dir, args.num_images)
                .map_err(|e| difflab_sampling::SamplingError::invalid(format!("{e:#}")))
        },
    )?;
    bar.finish_and_clear();

    let record = json!({
        "difflab_version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "seed": args.seed,
        "noise": noise,
        "noise_scheme": match noise {
            NoiseMode::PerImage => "image i: ChaCha8 stream seeded with splitmix(seed, i); draws in order: SR augmentation noise, x_T, one per stochastic step",
            NoiseMode::TorchGlobal => "torch.manual_seed(seed); randn([n, ...]) for x_T on the CPU generator, then each batch's draws in order",
        },
        "num_images": args.num_images,
        "batch_size": batch,
        "device": format!("{device:?}"),
        "offload": offload,
        "stages": stages.iter().zip(&outputs).map(|(s, o)| {
            let mut r = o.record.clone();
            r["name"] = json!(s.name);
            r["output_shape"] = json!(o.samples.size()[1..]);
            r
        }).collect::<Vec<_>>(),
    });
    let path = out.join("sample.json");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&record)? + "\n")
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    let final_output = &outputs[last];
    if let Some(t) = &final_output.trajectory {
        t.save(&out.join("trajectory.png"))?;
    }
    eprintln!(
        "wrote {} samples, grid and sample.json to {} ({})",
        args.num_images,
        out.display(),
        stages
            .iter()
            .zip(&outputs)
            .map(|(s, o)| format!("{}: {} steps", s.name, o.timesteps.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Images as PNGs and a grid; vectors (the 2-D toy) as `samples.csv`.
fn save_output(output: &StageOutput, dir: &Path, n: usize) -> Result<()> {
    let x = &output.samples;
    if x.dim() == 4 {
        save_images(x, dir, 0)?;
        save_grid(x, grid_columns(n), &dir.join("grid.png"))?;
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let rows = Vec::<Vec<f32>>::try_from(x.flatten(1, -1)).context("samples to rows")?;
        let text: String = rows
            .iter()
            .map(|r| r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        let path = dir.join("samples.csv");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
