//! `difflab sample`: generate images with a model and any sampler, and record how.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_models::load_diffusers_unet;
use difflab_pipeline::images::{grid_columns, save_grid, save_images};
use difflab_pipeline::{DeviceSpec, Network, NetworkDenoiser};
use difflab_samplers::{Conditioning, GlobalSeedNoise, NoiseSource, SamplerConfig, SamplerKind};
use difflab_schedulers::{BetaScheduleKind, Prediction, ScheduleConfig, TimestepSpacing};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

/// Arguments of `difflab sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, value_name = "DIR")]
    diffusers_model: PathBuf,
    /// ddim or ddpm.
    #[arg(long, default_value = "ddim", value_parser = parse::<SamplerKind>)]
    sampler: SamplerKind,
    /// Denoiser evaluations (default: 50 for ddim, T for ddpm).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// leading, trailing or linspace.
    #[arg(long, default_value = "leading", value_parser = parse::<TimestepSpacing>)]
    spacing: TimestepSpacing,
    /// Added to leading-spaced timesteps.
    #[arg(long, default_value_t = 0)]
    steps_offset: usize,
    /// What the model predicts: eps, x0 or v.
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
    let dir = &args.diffusers_model;
    let (unet, _vs, model_config) = load_diffusers_unet(dir, device)
        .with_context(|| format!("loading diffusers model {}", dir.display()))?;
    let (h, w) = model_config
        .sample_size()
        .with_context(|| format!("{}: config.json has no sample_size", dir.display()))?;
    let c = model_config.in_channels;
    let classes = unet.config().num_classes;
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

    let schedule_config = ScheduleConfig {
        beta_start: args.beta_start,
        beta_end: args.beta_end,
        ..ScheduleConfig::new(args.beta_schedule, args.train_timesteps)
    };
    let schedule = schedule_config
        .build()
        .context("--beta-schedule / --beta-start / --beta-end")?;
    let sampler_config = SamplerConfig {
        steps: args.steps,
        eta: args.eta,
        spacing: args.spacing,
        steps_offset: args.steps_offset,
        clip_sample: !args.no_clip_sample,
        ..SamplerConfig::new(args.sampler)
    };
    if args.sampler == SamplerKind::Cold {
        bail!("--sampler cold needs a cold-diffusion model (process: cold); use ddim or ddpm here");
    }
    let sampler = sampler_config.build(&schedule, None)?;
    let network = Network::Unet(unet);
    let denoiser = NetworkDenoiser::new(&network, args.prediction);

    let n = args.num_images as i64;
    let mut noise = GlobalSeedNoise::new(args.seed);
    let x_t = noise.draw(&[n, c, h, w], Kind::Float, tch::Device::Cpu);
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
        save_images(&x, &args.out, b * batch)?;
        outputs.push(x.to_device(tch::Device::Cpu));
    }
    bar.finish_and_clear();
    drop(noise);
    let all = Tensor::cat(&outputs, 0);
    save_grid(
        &all,
        grid_columns(args.num_images),
        &args.out.join("grid.png"),
    )?;

    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let record = json!({
        "difflab_version": env!("CARGO_PKG_VERSION"),
        "model": {
            "diffusers_model": dir,
            "weights_sha256": sha256_file(&weights)?,
            "config_sha256": sha256_file(&dir.join("config.json"))?,
            "prediction": args.prediction,
        },
        "schedule": schedule_config,
        "sampler": sampler_config,
        "timesteps": sampler.timesteps(),
        "seed": args.seed,
        "noise": "torch.manual_seed(seed); randn([n, C, H, W]) on the CPU generator, then batches in order",
        "num_images": args.num_images,
        "batch_size": batch,
        "class": labels,
        "device": format!("{device:?}"),
        "image_size": [c, h, w],
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
