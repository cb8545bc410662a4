//! `difflab eval`: sample-quality metrics for a run or a folder of samples, and
//! `difflab eval train-reference`: train the feature classifier they are measured with.
//! See `docs/evaluation.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use difflab_data::{DataConfig, DataKind, LabelMode};
use difflab_eval::suite::{ImageEvalOptions, evaluate_images, evaluate_toy};
use difflab_eval::{
    EvalReport, REFERENCE_WEIGHTS, ReferenceClassifier, TrainOptions, format_table,
    read_image_folder, read_samples_csv, save_classifier, train_classifier,
};
use difflab_pipeline::config::{load_config, load_recorded_config};
use difflab_pipeline::{DeviceSpec, ExperimentConfig, ModelConfig};
use difflab_samplers::{SamplerConfig, SamplerKeys, SamplerKind};
use serde_json::json;
use tch::Tensor;

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
    #[arg(long)]
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

fn parse_kind(s: &str) -> Result<SamplerKind, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
}

/// Run the command.
pub fn run(args: &EvalArgs, device: Option<DeviceSpec>) -> Result<()> {
    match &args.command {
        Some(EvalCommand::TrainReference(a)) => train_reference(a, device),
        None => evaluate(&args.metrics, device),
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

/// The shipped reference's weights: `checkpoints/…` under the current directory, else under the
/// source tree this binary was built from.
fn default_classifier() -> PathBuf {
    let local = PathBuf::from(REFERENCE_WEIGHTS);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(REFERENCE_WEIGHTS)
}

fn evaluate(args: &MetricsArgs, device: Option<DeviceSpec>) -> Result<()> {
    let (count, folder) = match args.samples.as_deref().map(str::parse::<usize>) {
        Some(Ok(n)) => (Some(n), None),
        Some(Err(_)) => (None, args.samples.as_ref().map(PathBuf::from)),
        None => (None, None),
    };
    let num_samples = args.num_samples.or(count).unwrap_or(1000);
    if num_samples == 0 {
        bail!("--samples/-n must be at least 1");
    }
    if args.run.is_none() && folder.is_none() {
        bail!(
            "pass --run DIR (sample, then evaluate) or --samples DIR (evaluate existing samples)"
        );
    }
    let config: Option<ExperimentConfig> = match (&args.run, &args.config) {
        (Some(run), _) => Some(load_recorded_config(&run.join("config.yaml"), &[])?),
        (None, Some(path)) => Some(load_recorded_config(path, &[])?),
        (None, None) => None,
    };
    let torch_device = device.unwrap_or_default().resolve()?;
    let started = Instant::now();

    // The sampler flags, checked here against the run's sampler (as `difflab sample` will apply
    // them) so that e.g. `--eta` on a ddpm run fails before anything is sampled.
    let changes = SamplerKeys {
        kind: args.sampler,
        steps: args.steps,
        eta: args.eta,
        ..SamplerKeys::default()
    };
    let flags = |e: String| anyhow::anyhow!("--sampler/--steps/--eta: {e}");
    let sampler: Option<SamplerConfig> = match &config {
        Some(c) => {
            let s = c
                .sampler
                .apply(&changes)
                .map_err(|e| flags(e.to_string()))?;
            c.check_sampler(&s).map_err(flags)?;
            Some(s)
        }
        // Samples without a config: the flags only describe them, but must still fit together.
        None => {
            changes
                .check(args.sampler.unwrap_or_default())
                .map_err(|e| flags(e.to_string()))?;
            None
        }
    };
    let sampler_kind = sampler
        .as_ref()
        .map_or(args.sampler.unwrap_or_default(), SamplerConfig::kind);
    let steps = args
        .steps
        .or_else(|| sampler.as_ref().and_then(SamplerConfig::steps));
    let sampler_name = sampler_kind.name().to_string();
    let out = match (&args.out, &folder, &args.run) {
        (Some(o), _, _) => o.clone(),
        (None, Some(f), _) => f.clone(),
        (None, None, Some(run)) => run.join("eval").join(format!(
            "{sampler_name}-{}-n{num_samples}-seed{}",
            steps.map_or("default".to_string(), |s| s.to_string()),
            args.seed
        )),
        (None, None, None) => unreachable!("checked above"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let is_toy = config
        .as_ref()
        .is_some_and(|c| c.data.kind == DataKind::Toy2d);
    let classes: Option<i64> = config.as_ref().and_then(|c| match &c.model {
        ModelConfig::Unet(u) => u.num_classes,
        _ => None,
    });
    // Which classes to generate, and how many of each.
    let class_list: Option<Vec<i64>> = match (classes, args.class) {
        (Some(k), Some(c)) if (0..k).contains(&c) => Some(vec![c]),
        (Some(k), Some(c)) => bail!(
            "--class {c} is out of range: the model has classes 0..{}",
            k - 1
        ),
        (Some(k), None) => Some((0..k).collect()),
        (None, Some(c)) if folder.is_some() => Some(vec![c]),
        (None, Some(c)) => bail!("--class {c} given but the run is not class-conditional"),
        (None, None) => None,
    };

    let samples_dir = folder.clone().unwrap_or_else(|| out.join("samples"));
    let mut sample_record = json!(null);
    if folder.is_none() {
        let run = args.run.as_ref().expect("--run");
        sample_record = draw_samples(
            args,
            run,
            &samples_dir,
            num_samples,
            class_list.as_deref(),
            device,
        )?;
    }

    let (evaluation, n, network) = if is_toy {
        let config = config.as_ref().expect("toy config");
        let x = read_samples_csv(&samples_dir.join("samples.csv"))?;
        let t = &config.data.toy2d;
        let ev = evaluate_toy(t.dataset, t.noise_or_default(), &x, args.seed)?;
        let network = json!({
            "kind": "toy2d",
            "dataset": t.dataset.name(),
            "noise": t.noise_or_default(),
            "reference": "fresh true samples from difflab_data::sample_toy2d_with_noise",
        });
        (ev, x.size()[0] as usize, network)
    } else {
        let weights = match (&args.classifier, &config) {
            (Some(p), _) => p.clone(),
            (None, None) => default_classifier(),
            (None, Some(c)) if c.data.kind == DataKind::FashionMnist => default_classifier(),
            (None, Some(c)) => bail!(
                "no reference classifier for data.kind {}: train one with `difflab eval train-reference --config CONFIG` and pass --classifier PATH",
                c.data.kind.name()
            ),
        };
        let classifier = ReferenceClassifier::load(&weights, torch_device)
            .with_context(|| format!("loading the classifier {}", weights.display()))?;
        let (x, requested) = read_folder_with_classes(&samples_dir, class_list.as_deref())?;
        let options = ImageEvalOptions {
            seed: args.seed,
            batch_size: args.batch_size.unwrap_or(500),
            device: torch_device,
            class_filter: args.class,
            ..ImageEvalOptions::default()
        };
        let ev = evaluate_images(&classifier, &x, requested.as_ref(), &options)?;
        let meta = &classifier.meta;
        let network = json!({
            "kind": "classifier",
            "architecture": meta.architecture,
            "path": weights,
            "weights_sha256": meta.weights_sha256,
            "test_accuracy": meta.test_accuracy,
            "feature_dim": meta.spec.feature_dim,
            "input_size": meta.spec.input_size,
            "channels": meta.spec.channels,
            "data": meta.data.kind.name(),
        });
        (ev, x.size()[0] as usize, network)
    };

    let mut details = evaluation.details;
    details["seconds"] = json!(started.elapsed().as_secs_f64());
    let report = EvalReport {
        metrics: evaluation.metrics,
        floor: evaluation.floor,
        num_samples: n,
        feature_network: network,
        sampler: json!({
            "kind": sampler_name,
            "steps": steps,
            "eta": args.eta,
            "seed": args.seed,
            "class_seeds": "class k is sampled with seed + k",
            "sample_record": sample_record,
        }),
        source: json!({
            "run": args.run,
            "checkpoint": args.checkpoint,
            "weights": if args.raw { "raw" } else { "ema" },
            "samples": samples_dir,
            "classes": class_list,
        }),
        details,
    };
    let text = serde_json::to_string_pretty(&report)? + "\n";
    let path = out.join("eval.json");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        print!("{text}");
    } else {
        print!("{}", format_table(&report));
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The folder of class `k`'s samples.
fn class_dir(root: &Path, k: i64) -> PathBuf {
    root.join(format!("class-{k:02}"))
}

/// Run `difflab sample` (this binary) for the run: once, or once per class with N/K samples
/// each. Returns sample.json of each call.
fn draw_samples(
    args: &MetricsArgs,
    run: &Path,
    dir: &Path,
    n: usize,
    classes: Option<&[i64]>,
    device: Option<DeviceSpec>,
) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("locating the difflab binary")?;
    let jobs: Vec<(Option<i64>, PathBuf, usize, u64)> = match classes {
        None => vec![(None, dir.to_path_buf(), n, args.seed)],
        Some(list) => {
            let per = n / list.len();
            if per == 0 {
                bail!(
                    "{n} samples cannot be split over {} classes: ask for at least one per class",
                    list.len()
                );
            }
            list.iter()
                .map(|&k| (Some(k), class_dir(dir, k), per, args.seed + k as u64))
                .collect()
        }
    };
    let mut records = Vec::new();
    for (class, out, count, seed) in jobs {
        let mut cmd = Command::new(&exe);
        cmd.arg("sample");
        // A checkpoint names its run; otherwise the run's latest checkpoint.
        match &args.checkpoint {
            Some(c) => cmd.arg("--checkpoint").arg(c),
            None => cmd.arg("--run").arg(run),
        };
        cmd.args(["-n", &count.to_string(), "--seed", &seed.to_string()]);
        cmd.arg("--out").arg(&out);
        if args.raw {
            cmd.arg("--raw");
        }
        if let Some(s) = args.sampler {
            cmd.args(["--sampler", s.name()]);
        }
        if let Some(s) = args.steps {
            cmd.args(["--steps", &s.to_string()]);
        }
        if let Some(e) = args.eta {
            cmd.args(["--eta", &e.to_string()]);
        }
        if let Some(b) = args.batch_size {
            cmd.args(["--batch-size", &b.to_string()]);
        }
        if let Some(k) = class {
            cmd.args(["--class", &k.to_string()]);
        }
        if let Some(d) = device {
            cmd.args(["--device", &d.to_string()]);
        }
        eprintln!(
            "sampling {count} {}into {}",
            class.map_or(String::new(), |k| format!("of class {k} ")),
            out.display()
        );
        let status = cmd.status().context("running difflab sample")?;
        if !status.success() {
            bail!("difflab sample failed ({status}) for {}", out.display());
        }
        let record = std::fs::read_to_string(out.join("sample.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        records.push(record.unwrap_or(serde_json::Value::Null));
    }
    Ok(json!(records))
}

/// The samples of a folder, with the class of each when `classes` is given (subfolders
/// class-KK/, or the whole folder when it has no such subfolder and one class is asked for).
fn read_folder_with_classes(
    dir: &Path,
    classes: Option<&[i64]>,
) -> Result<(Tensor, Option<Tensor>)> {
    let Some(classes) = classes else {
        return Ok((read_image_folder(dir)?, None));
    };
    if classes.len() == 1 && !class_dir(dir, classes[0]).is_dir() {
        let x = read_image_folder(dir)?;
        let n = x.size()[0];
        return Ok((
            x,
            Some(Tensor::full(
                [n],
                classes[0],
                (tch::Kind::Int64, tch::Device::Cpu),
            )),
        ));
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for &k in classes {
        let x = read_image_folder(&class_dir(dir, k))?;
        labels.push(Tensor::full(
            [x.size()[0]],
            k,
            (tch::Kind::Int64, tch::Device::Cpu),
        ));
        images.push(x);
    }
    Ok((Tensor::cat(&images, 0), Some(Tensor::cat(&labels, 0))))
}
