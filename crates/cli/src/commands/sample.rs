//! `difflab sample`: generate images with a model and any sampler, and record how.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_models::load_diffusers_unet;
use difflab_pipeline::ModelConfig;
use difflab_pipeline::checkpoint::load_weights;
use difflab_pipeline::config::load_config;
use difflab_pipeline::images::{grid_columns, save_grid, save_images};
use difflab_pipeline::train::{ProcessConfig, resolve_checkpoint};
use difflab_pipeline::{DeviceSpec, Network, NetworkDenoiser};
use difflab_samplers::{Conditioning, GlobalSeedNoise, NoiseSource, SamplerConfig, SamplerKind};
use difflab_schedulers::NoiseSchedule;
use difflab_schedulers::{BetaScheduleKind, Prediction, ScheduleConfig, TimestepSpacing};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::nn;
use tch::{Kind, Tensor};

/// Arguments of `difflab sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "run",
        conflicts_with = "run"
    )]
    diffusers_model: Option<PathBuf>,
    /// A difflab run directory: its config.yaml and latest checkpoint (EMA weights unless --raw).
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// With --run: a specific checkpoint directory instead of the latest.
    #[arg(long, requires = "run")]
    checkpoint: Option<PathBuf>,
    /// With --run: the raw weights instead of the EMA weights.
    #[arg(long, requires = "run")]
    raw: bool,
    /// ddim, ddpm or cold (default: the run's sampler; ddim for diffusers models).
    #[arg(long, value_parser = parse::<SamplerKind>)]
    sampler: Option<SamplerKind>,
    /// Denoiser evaluations (default: the run's; 50 for ddim, T for ddpm).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM η (0 = deterministic).
    #[arg(long)]
    eta: Option<f64>,
    /// leading, trailing or linspace.
    #[arg(long, value_parser = parse::<TimestepSpacing>)]
    spacing: Option<TimestepSpacing>,
    /// Added to leading-spaced timesteps.
    #[arg(long)]
    steps_offset: Option<usize>,
    /// What the model predicts: eps, x0 or v (diffusers models; a run knows its objective).
    #[arg(long, default_value = "eps", value_parser = parse::<Prediction>)]
    prediction: Prediction,
    /// The noise schedule the model was trained with (diffusers' default: linear 1e-4..0.02).
    #[arg(long, default_value = "linear", value_parser = parse::<BetaScheduleKind>)]
    beta_schedule: BetaScheduleKind,
    /// β_1 of the training schedule.
    #[arg(long)]
    beta_start: Option<f64>,
    /// β_T of the training schedule.
    #[arg(long)]
    beta_end: Option<f64>,
    /// Training timesteps T.
    #[arg(long, default_value_t = 1000)]
    train_timesteps: usize,
    /// Do not clamp the predicted x₀ to [-1, 1].
    #[arg(long)]
    no_clip_sample: bool,
    /// Class label for every image (class-conditional models).
    #[arg(long)]
    class: Option<i64>,
    /// Number of images.
    #[arg(short = 'n', long = "num-images", default_value_t = 16)]
    num_images: usize,
    /// Images per forward pass (bounds memory; default: all).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed: the initial noise is `torch.manual_seed(seed); torch.randn([n, C, H, W])`, as in
    /// diffusers pipelines.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: 000000.png, …, grid.png, sample.json.
    #[arg(long, default_value = "samples")]
    out: PathBuf,
}

fn parse<T: std::str::FromStr<Err = difflab_schedulers::ScheduleError>>(
    s: &str,
) -> Result<T, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
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
    let source = match (&args.diffusers_model, &args.run) {
        (Some(dir), _) => diffusers_source(args, dir, device)?,
        (None, Some(run)) => run_source(args, run, device)?,
        (None, None) => unreachable!("clap requires --diffusers-model or --run"),
    };
    let Source {
        network,
        _vs,
        schedule,
        schedule_config,
        mut sampler_config,
        prediction,
        shape,
        classes,
        record,
    } = source;
    if let Some(kind) = args.sampler {
        sampler_config.kind = kind;
    }
    if args.steps.is_some() {
        sampler_config.steps = args.steps;
    }
    if let Some(eta) = args.eta {
        sampler_config.eta = eta;
    }
    if let Some(spacing) = args.spacing {
        sampler_config.spacing = spacing;
    }
    if let Some(offset) = args.steps_offset {
        sampler_config.steps_offset = offset;
    }
    if args.no_clip_sample {
        sampler_config.clip_sample = false;
    }
    if sampler_config.kind == SamplerKind::Cold {
        bail!(
            "--sampler cold starts from degraded data and is not available here yet; use ddim or ddpm"
        );
    }
    let labels = match (classes, args.class) {
        (Some(n), Some(k)) if (0..n).contains(&k) => Some(k),
        (Some(n), Some(k)) => bail!(
            "--class {k} is out of range: this model has classes 0..{}",
            n - 1
        ),
        (Some(n), None) => bail!("this model is class-conditional ({n} classes): pass --class K"),
        (None, Some(k)) => bail!("--class {k} given but this model is unconditional"),
        (None, None) => None,
    };
    let sampler = sampler_config.build(&schedule, None)?;
    let denoiser = NetworkDenoiser::new(&network, prediction);

    let n = args.num_images as i64;
    let mut noise = GlobalSeedNoise::new(args.seed);
    let mut full = vec![n];
    full.extend(&shape);
    let x_t = noise.draw(&full, Kind::Float, tch::Device::Cpu);
    let steps = sampler.timesteps().len();
    let batches = (args.num_images).div_ceil(batch);
    let bar = ProgressBar::new((steps * batches) as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})")
            .expect("valid template"),
    );
    let mut outputs = Vec::with_capacity(batches);
    for (b, chunk) in x_t.split(batch as i64, 0).into_iter().enumerate() {
        bar.set_message(format!("batch {}/{batches}", b + 1));
        let size = chunk.size()[0];
        let cond = match labels {
            Some(k) => Conditioning::classes(Tensor::full([size], k, (Kind::Int64, device))),
            None => Conditioning::none(),
        };
        let x = sampler
            .sample(
                &denoiser,
                chunk.to_device(device),
                &cond,
                &mut noise,
                &mut |_| bar.inc(1),
            )
            .with_context(|| format!("sampling batch {}", b + 1))?;
        if shape.len() == 3 {
            save_images(&x, &args.out, b * batch)?;
        }
        outputs.push(x.to_device(tch::Device::Cpu));
    }
    bar.finish_and_clear();
    drop(noise);
    let all = Tensor::cat(&outputs, 0);
    if shape.len() == 3 {
        save_grid(
            &all,
            grid_columns(args.num_images),
            &args.out.join("grid.png"),
        )?;
    } else {
        // Vector data (the 2-D toy): one CSV row per sample.
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let rows = Vec::<Vec<f32>>::try_from(all.flatten(1, -1)).context("samples to rows")?;
        let text: String = rows
            .iter()
            .map(|r| r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        let path = args.out.join("samples.csv");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    let record = json!({
        "difflab_version": env!("CARGO_PKG_VERSION"),
        "model": record,
        "prediction": prediction,
        "schedule": schedule_config,
        "sampler": sampler_config,
        "timesteps": sampler.timesteps(),
        "seed": args.seed,
        "noise": "torch.manual_seed(seed); randn([n, ...]) on the CPU generator, then batches in order",
        "num_images": args.num_images,
        "batch_size": batch,
        "class": labels,
        "device": format!("{device:?}"),
        "image_size": shape,
    });
    let path = args.out.join("sample.json");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&record)? + "\n")
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} images, grid.png and sample.json to {} ({} {} steps)",
        args.num_images,
        args.out.display(),
        sampler.name(),
        steps
    );
    Ok(())
}

/// Hex SHA-256 of a file, streamed.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buf[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What to sample from, wherever it came from.
struct Source {
    network: Network,
    _vs: nn::VarStore,
    schedule: NoiseSchedule,
    schedule_config: ScheduleConfig,
    sampler_config: SamplerConfig,
    prediction: Prediction,
    shape: Vec<i64>,
    classes: Option<i64>,
    record: serde_json::Value,
}

/// A diffusers UNet folder with diffusers' default DDIM settings (overridable by flags).
fn diffusers_source(args: &SampleArgs, dir: &Path, device: tch::Device) -> Result<Source> {
    let (unet, vs, model_config) = load_diffusers_unet(dir, device)
        .with_context(|| format!("loading diffusers model {}", dir.display()))?;
    let (h, w) = model_config
        .sample_size()
        .with_context(|| format!("{}: config.json has no sample_size", dir.display()))?;
    let schedule_config = ScheduleConfig {
        beta_start: args.beta_start,
        beta_end: args.beta_end,
        ..ScheduleConfig::new(args.beta_schedule, args.train_timesteps)
    };
    let schedule = schedule_config
        .build()
        .context("--beta-schedule / --beta-start / --beta-end")?;
    let sampler_config = SamplerConfig {
        spacing: TimestepSpacing::Leading,
        ..SamplerConfig::new(SamplerKind::Ddim)
    };
    let record = json!({
        "diffusers_model": dir,
        "weights_sha256": sha256_file(&dir.join("diffusion_pytorch_model.safetensors"))?,
        "config_sha256": sha256_file(&dir.join("config.json"))?,
    });
    Ok(Source {
        classes: unet.config().num_classes,
        network: Network::Unet(unet),
        _vs: vs,
        schedule,
        schedule_config,
        sampler_config,
        prediction: args.prediction,
        shape: vec![model_config.in_channels, h, w],
        record,
    })
}

/// A difflab run: its resolved config and a checkpoint's EMA (or raw) weights.
fn run_source(args: &SampleArgs, run: &Path, device: tch::Device) -> Result<Source> {
    let config_path = run.join("config.yaml");
    let config = load_config(&config_path, &[])?;
    let checkpoint = match &args.checkpoint {
        Some(c) => resolve_checkpoint(c)?,
        None => resolve_checkpoint(run)?,
    };
    let weights = checkpoint.join(if args.raw {
        "model.safetensors"
    } else {
        "ema.safetensors"
    });
    let mut vs = nn::VarStore::new(device);
    let network = Network::build(&vs.root(), &config.model).context("building the model")?;
    load_weights(&mut vs, &weights)?;
    let (shape, classes) = match &config.model {
        ModelConfig::Unet(u) => {
            if u.label_dim.is_some() || u.cond_channels > 0 || u.context_dim.is_some() {
                bail!(
                    "sampling models with label-vector, image or context conditioning from the CLI lands with the sampling issue"
                );
            }
            (
                vec![
                    u.in_channels,
                    config.data.resolution,
                    config.data.resolution,
                ],
                u.num_classes,
            )
        }
        ModelConfig::Mlp(m) => (vec![m.data_dim], None),
        ModelConfig::SrUnet(_) => {
            bail!("an SR stage samples through a cascade (lands with the cascade issue)")
        }
    };
    if !matches!(config.process, ProcessConfig::Gaussian) {
        bail!(
            "{}: cold-diffusion runs start from degraded data; sampling them from the CLI lands with the sampling issue",
            config_path.display()
        );
    }
    let schedule = config.schedule.build()?;
    let record = json!({
        "run": run,
        "checkpoint": checkpoint,
        "weights": if args.raw { "raw" } else { "ema" },
        "weights_sha256": sha256_file(&weights)?,
    });
    Ok(Source {
        network,
        _vs: vs,
        schedule,
        schedule_config: config.schedule.clone(),
        sampler_config: config.sampler.clone(),
        prediction: config.objective,
        shape,
        classes,
        record,
    })
}
