//! `difflab bench`: training and DDIM sampling throughput of one model, with its FLOPs, the
//! machine's matmul peak and the process's peak memory. `scripts/bench/compare.sh` runs it
//! next to the PyTorch/diffusers reference and prints the ratios.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_lab::bench::{
    BenchSettings, bench_sampling, bench_training, forward_flops, peak_rss_bytes, sgemm_gflops,
};
use difflab_models::diffusers::{CONFIG_FILE, DiffusersUNetConfig};
use difflab_pipeline::config::{load_config, parse_config};
use difflab_pipeline::{DeviceSpec, ExperimentConfig, ModelConfig, Override};
use serde_json::json;

use super::config::parse_override;

/// Arguments of `difflab bench`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["diffusers_model", "config"])))]
pub struct BenchArgs {
    /// A diffusers `UNet2DModel` folder: the model is built from its config.json (weights are
    /// not needed: throughput does not depend on them). Trained as eps-prediction on the
    /// default linear schedule with the trainer's default optimizer, clipping and EMA.
    #[arg(long, value_name = "DIR")]
    diffusers_model: Option<PathBuf>,
    /// A difflab experiment config: its model, schedule, objective, training and sampler
    /// sections are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override config keys (e.g. `training.memory_format=contiguous`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// Examples per training step and per sampling run.
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Image resolution (default: the diffusers `sample_size`, else the config's
    /// `data.resolution`, else 32).
    #[arg(long)]
    resolution: Option<i64>,
    /// Timed training steps (0 skips training).
    #[arg(long, default_value_t = 20)]
    train_steps: usize,
    /// DDIM steps per sampling run (0 skips sampling).
    #[arg(long, default_value_t = 20)]
    sample_steps: usize,
    /// Timed sampling runs.
    #[arg(long, default_value_t = 2)]
    sample_runs: usize,
    /// Untimed training steps first (sampling always does one untimed run).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Measure the matmul peak (n×n f32 products) to report the fraction of it reached;
    /// 0 skips it.
    #[arg(long, default_value_t = 2048)]
    sgemm_size: i64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn experiment(args: &BenchArgs) -> Result<(ExperimentConfig, Option<i64>)> {
    if let Some(dir) = &args.diffusers_model {
        let path = dir.join(CONFIG_FILE);
        let config = DiffusersUNetConfig::from_file(&path)?;
        let native = config
            .to_unet_config()
            .map_err(|e| e.in_file(&path))
            .context("converting the diffusers config")?;
        let value = json!({
            "name": dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            "model": ModelConfig::Unet(native),
        });
        let sample_size = config.sample_size().map(|(h, _)| h);
        // JSON is YAML: parse it like a config file, so `--set` applies here too.
        let experiment = parse_config(&value.to_string(), &path, &args.overrides)
            .context("building the experiment")?;
        return Ok((experiment, sample_size));
    }
    let Some(path) = &args.config else {
        bail!("give --diffusers-model DIR or --config FILE");
    };
    let config = load_config(path, &args.overrides)?;
    let resolution = config.data.resolution;
    Ok((config, Some(resolution)))
}

/// Run the command.
pub fn run(args: &BenchArgs, device: Option<DeviceSpec>) -> Result<()> {
    let (config, default_resolution) = experiment(args)?;
    let device = device.unwrap_or(config.device).resolve()?;
    let resolution = args.resolution.or(default_resolution).unwrap_or(32);
    let settings = BenchSettings {
        batch: args.batch,
        resolution,
        train_steps: args.train_steps,
        sample_steps: args.sample_steps,
        sample_runs: args.sample_runs,
        warmup: args.warmup,
        device,
    };
    let params = {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        difflab_pipeline::Network::build(&vs.root(), &config.model)?.num_parameters()
    };
    let fwd = forward_flops(&config.model, resolution);
    let sgemm = (args.sgemm_size > 0).then(|| sgemm_gflops(args.sgemm_size, 8, device));
    let train = if args.train_steps > 0 {
        Some(bench_training(&config, &settings).context("training benchmark")?)
    } else {
        None
    };
    let sample = if args.sample_steps > 0 {
        Some(bench_sampling(&config, &settings).context("sampling benchmark")?)
    } else {
        None
    };
    // Achieved GFLOP/s: training counts forward + backward (3× forward), sampling forward only.
    let achieved =
        |images_per_s: f64, factor: f64| fwd.map(|f| images_per_s * factor * f as f64 / 1e9);
    let train_gflops = train.as_ref().and_then(|t| achieved(t.images_per_s, 3.0));
    let sample_gflops = sample
        .as_ref()
        .and_then(|s| achieved(s.images_per_s * s.steps as f64, 1.0));
    let fraction = |g: Option<f64>| g.zip(sgemm).map(|(g, p)| g / p);
    let peak_rss = peak_rss_bytes();
    let report = json!({
        "impl": "difflab",
        "model": config.name,
        "parameters": params,
        "device": format!("{device:?}"),
        "threads": tch::get_num_threads(),
        "batch": args.batch,
        "resolution": resolution,
        "forward_gflops_per_image": fwd.map(|f| f as f64 / 1e9),
        "sgemm_gflops": sgemm,
        "train": train,
        "train_gflops": train_gflops,
        "train_peak_fraction": fraction(train_gflops),
        "sample": sample,
        "sample_gflops": sample_gflops,
        "sample_peak_fraction": fraction(sample_gflops),
        "peak_rss_mb": peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{}: {params} parameters, batch {}, {resolution}px, {} threads, {device:?}",
        config.name,
        args.batch,
        tch::get_num_threads()
    );
    if let Some(f) = fwd {
        println!("  forward FLOPs per image: {:.3} GFLOP", f as f64 / 1e9);
    }
    if let Some(p) = sgemm {
        println!("  sgemm peak: {p:.1} GFLOP/s");
    }
    let pct = |g: Option<f64>| {
        fraction(g)
            .map(|f| format!(", {:.1}% of sgemm peak", 100.0 * f))
            .unwrap_or_default()
    };
    if let Some(t) = &train {
        println!(
            "  training: {:.2} img/s ({:.2} steps/s, median step {:.1} ms){}",
            t.images_per_s,
            t.steps_per_s,
            t.median_step_ms,
            pct(train_gflops)
        );
        let p = &t.phases_ms;
        println!(
            "    per step: forward {:.2} ms, backward {:.2} ms, clip {:.2} ms, AdamW + zero grad + EMA {:.2} ms",
            p.forward, p.backward, p.clip, p.update
        );
    }
    if let Some(s) = &sample {
        println!(
            "  DDIM-{} sampling: {:.2} img/s (median run {:.2} s){}",
            s.steps,
            s.images_per_s,
            s.median_run_s,
            pct(sample_gflops)
        );
    }
    if let Some(b) = peak_rss {
        println!(
            "  peak resident memory: {:.1} MiB",
            b as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
