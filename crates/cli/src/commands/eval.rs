//! `difflab eval`: sample-quality metrics for a run or a folder of samples, and
//! `difflab eval train-reference`: train the feature classifier they are measured with.
//! See `docs/evaluation.md`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use difflab_data::{DataConfig, DataKind, LabelMode};
use difflab_eval::job::{EvalRequest, evaluate};
use difflab_eval::{
    REFERENCE_WEIGHTS, TrainOptions, format_table, save_classifier, train_classifier,
};
use difflab_pipeline::DeviceSpec;
use difflab_pipeline::config::load_config;
use difflab_samplers::SamplerKind;

/// Arguments of `difflab eval`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Subcommands of `difflab eval`.
#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Train the LeNet feature classifier (default: the shipped Fashion-MNIST reference).
    TrainReference(TrainReferenceArgs),
}

/// Arguments of `difflab eval train-reference`.
#[derive(Args, Debug)]
struct TrainReferenceArgs {
    /// Any experiment config whose data has class labels (`label_mode: class`): train the same
    /// classifier on its data (the generic path). Default: Fashion-MNIST at 32 px, 1 channel.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Weights file; PATH.json and PATH.test-stats.safetensors are written next to it.
    /// Default: checkpoints/fashion-mnist-lenet.safetensors, or checkpoints/<name>-lenet.safetensors.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Stop after this many steps (smoke tests).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Use only the first N examples of each split (smoke tests).
    #[arg(long)]
    limit: Option<usize>,
}

/// Arguments of `difflab eval` itself.
#[derive(Args, Debug)]
struct MetricsArgs {
    /// A difflab run: draw samples from it with `difflab sample`, then evaluate them.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// With --run: a specific checkpoint directory instead of the latest.
    #[arg(long, value_name = "DIR", requires = "run")]
    checkpoint: Option<PathBuf>,
    /// With --run: the raw weights instead of the EMA weights.
    #[arg(long, requires = "run")]
    raw: bool,
    /// A number: how many samples (same as -n). A folder: evaluate the PNGs (or samples.csv)
    /// already in it instead of sampling (class-conditional folders: class-00/, class-01/, …).
    #[arg(long = "samples", value_name = "N|DIR")]
    samples: Option<String>,
    /// Number of samples to draw (default 1000).
    #[arg(short = 'n', long = "num-samples")]
    num_samples: Option<usize>,
    /// The experiment config that says what the samples are (with a samples folder and no --run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// ddim, ddpm or cold (default: the run's sampler). Switching sampler keeps the run's
    /// settings that the new one takes.
    #[arg(long, value_parser = parse_kind)]
    sampler: Option<SamplerKind>,
    /// Denoiser evaluations (default: the run's).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM η; ddim only.
    #[arg(long, value_parser = super::finite)]
    eta: Option<f64>,
    /// Seed of the samples (class k uses seed + k) and of the real-image picks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass, for sampling and for the classifier.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Class-conditional runs: only this class (default: every class, N/K samples each).
    #[arg(long)]
    class: Option<i64>,
    /// A classifier's weights (PATH.safetensors with PATH.json), e.g. one from
    /// `difflab eval train-reference --config`. Default: the shipped Fashion-MNIST reference.
    #[arg(long, value_name = "PATH")]
    classifier: Option<PathBuf>,
    /// Output folder (default: RUN/eval/<sampler>-<steps>-n<N>-seed<S>, or the samples folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print eval.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Run the command.
pub fn run(args: &EvalArgs, device: Option<DeviceSpec>) -> Result<()> {
    match &args.command {
        Some(EvalCommand::TrainReference(a)) => train_reference(a, device),
        None => measure(&args.metrics, device),
    }
}

/// The data the shipped reference is trained on: Fashion-MNIST as `configs/fashion-mnist.yaml`
/// feeds it to the diffusion model (32 px, 1 channel, [−1, 1]), with class labels.
fn reference_data() -> DataConfig {
    DataConfig {
        kind: DataKind::FashionMnist,
        resolution: 32,
        channels: 1,
        label_mode: LabelMode::Class,
        ..DataConfig::default()
    }
}

fn train_reference(args: &TrainReferenceArgs, device: Option<DeviceSpec>) -> Result<()> {
    let (mut data, data_seed, default_out) = match &args.config {
        Some(path) => {
            let config = load_config(path, &[])?;
            if config.data.label_mode != LabelMode::Class {
                bail!(
                    "{}: data.label_mode is {}; a classifier needs class labels (label_mode: class)",
                    path.display(),
                    config.data.label_mode.name()
                );
            }
            let out = PathBuf::from(format!("checkpoints/{}-lenet.safetensors", config.name));
            (config.data, config.seed, out)
        }
        None => (reference_data(), 0, PathBuf::from(REFERENCE_WEIGHTS)),
    };
    if args.limit.is_some() {
        data.limit = args.limit;
    }
    let out = args.out.clone().unwrap_or(default_out);
    let device = device.unwrap_or_default().resolve()?;
    let options = TrainOptions {
        seed: args.seed,
        epochs: args.epochs,
        max_steps: args.max_steps,
        ..TrainOptions::default()
    };
    let (mut classifier, stats) =
        train_classifier(&data, data_seed, &options, device, &mut |line| {
            eprintln!("{line}")
        })?;
    save_classifier(&mut classifier, &stats, &out)?;
    let meta = &classifier.meta;
    eprintln!(
        "wrote {} (sha256 {}), test accuracy {:.4}, floor cFID (train {} vs test) {:.4}",
        out.display(),
        meta.weights_sha256,
        meta.test_accuracy,
        meta.floor_cfid_n,
        meta.floor_cfid
    );
    Ok(())
}

fn parse_kind(s: &str) -> Result<SamplerKind, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
}

/// `difflab eval` itself: the request the arguments make, run by the library, printed.
fn measure(args: &MetricsArgs, device: Option<DeviceSpec>) -> Result<()> {
    let (count, folder) = match args.samples.as_deref().map(str::parse::<usize>) {
        Some(Ok(n)) => (Some(n), None),
        Some(Err(_)) => (None, args.samples.as_ref().map(PathBuf::from)),
        None => (None, None),
    };
    let sampler = args.sampler;
    let request = EvalRequest {
        run: args.run.clone(),
        checkpoint: args.checkpoint.clone(),
        raw: args.raw,
        samples: folder,
        num_samples: args.num_samples.or(count).unwrap_or(1000),
        config: args.config.clone(),
        sampler,
        steps: args.steps,
        eta: args.eta,
        seed: args.seed,
        batch_size: args.batch_size,
        class: args.class,
        classifier: args.classifier.clone(),
        out: args.out.clone(),
    };
    let device = device.unwrap_or_default().resolve()?;
    let (report, path) = evaluate(&request, device)?;
    if args.json {
        print!("{}", serde_json::to_string_pretty(&report)? + "\n");
    } else {
        print!("{}", format_table(&report));
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
