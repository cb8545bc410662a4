//! One evaluation, as `difflab eval` runs it: draw samples from a run (through
//! [`difflab_sampling::sample_classes`]) or read a folder of samples, measure them against the
//! data in the reference classifier's feature space (or, for the 2-D toy, against fresh true
//! points), and write `eval.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use difflab_data::DataKind;
use difflab_pipeline::config::load_recorded_config;
use difflab_pipeline::{ExperimentConfig, ModelConfig};
use difflab_samplers::{SamplerConfig, SamplerKeys, SamplerKind};
use difflab_sampling::cascade::CliStageSettings;
use difflab_sampling::{
    OutputMode, SampleRequest, SampleSource, WeightsKind, class_dir, sample_classes,
};
use serde_json::json;
use tch::{Device, Tensor};

use crate::suite::{ImageEvalOptions, evaluate_images, evaluate_toy};
use crate::{
    EvalError, EvalReport, REFERENCE_WEIGHTS, ReferenceClassifier, read_image_folder,
    read_samples_csv,
};

/// What to evaluate and how: the fields of `difflab eval`'s command line.
#[derive(Clone, Debug, Default)]
pub struct EvalRequest {
    /// A run to draw samples from.
    pub run: Option<PathBuf>,
    /// With `run`: a checkpoint directory instead of the latest.
    pub checkpoint: Option<PathBuf>,
    /// With `run`: the raw weights instead of the EMA.
    pub raw: bool,
    /// A folder of samples to evaluate instead of drawing them.
    pub samples: Option<PathBuf>,
    /// Samples to draw.
    pub num_samples: usize,
    /// The experiment config that says what the samples are (with a folder and no run).
    pub config: Option<PathBuf>,
    /// The sampler (default: the run's).
    pub sampler: Option<SamplerKind>,
    /// Denoiser evaluations (default: the run's).
    pub steps: Option<usize>,
    /// DDIM η; ddim only.
    pub eta: Option<f64>,
    /// Seed of the samples (class k uses seed + k) and of the real-image picks.
    pub seed: u64,
    /// Images per forward pass.
    pub batch_size: Option<usize>,
    /// Class-conditional runs: only this class.
    pub class: Option<i64>,
    /// A classifier's weights (default: the shipped Fashion-MNIST reference).
    pub classifier: Option<PathBuf>,
    /// Output folder (default: `RUN/eval/<sampler>-<steps>-n<N>-seed<S>`, or the samples folder).
    pub out: Option<PathBuf>,
}

fn input(message: impl Into<String>) -> EvalError {
    EvalError::Input(message.into())
}

/// The shipped reference's weights: `checkpoints/…` under the current directory, else under the
/// source tree this binary was built from.
pub fn default_classifier() -> PathBuf {
    let local = PathBuf::from(REFERENCE_WEIGHTS);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(REFERENCE_WEIGHTS)
}

/// Run the evaluation `args` describes on `torch_device`: draw or read the samples, measure,
/// write `OUT/eval.json`. Returns the report and the path of `eval.json`.
pub fn evaluate(
    args: &EvalRequest,
    torch_device: Device,
) -> Result<(EvalReport, PathBuf), EvalError> {
    let folder = args.samples.clone();
    let num_samples = args.num_samples;
    if num_samples == 0 {
        return Err(input("--samples/-n must be at least 1"));
    }
    if args.run.is_none() && folder.is_none() {
        return Err(input(
            "pass --run DIR (sample, then evaluate) or --samples DIR (evaluate existing samples)",
        ));
    }
    let load = |path: &Path| load_recorded_config(path, &[]).map_err(|e| input(e.to_string()));
    let config: Option<ExperimentConfig> = match (&args.run, &args.config) {
        (Some(run), _) => Some(load(&run.join("config.yaml"))?),
        (None, Some(path)) => Some(load(path)?),
        (None, None) => None,
    };
    let started = Instant::now();

    // The sampler flags, checked against the run's sampler (as sampling will apply them) so
    // that e.g. `--eta` on a ddpm run fails before anything is sampled.
    let changes = SamplerKeys {
        kind: args.sampler,
        steps: args.steps,
        eta: args.eta,
        ..SamplerKeys::default()
    };
    let flags = |e: String| input(format!("--sampler/--steps/--eta: {e}"));
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
    std::fs::create_dir_all(&out).map_err(|e| EvalError::file(&out, e))?;

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
        (Some(k), Some(c)) => {
            return Err(input(format!(
                "--class {c} is out of range: the model has classes 0..{}",
                k - 1
            )));
        }
        (Some(k), None) => Some((0..k).collect()),
        (None, Some(c)) if folder.is_some() => Some(vec![c]),
        (None, Some(c)) => {
            return Err(input(format!(
                "--class {c} given but the run is not class-conditional"
            )));
        }
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
            torch_device,
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
            (None, Some(c)) => {
                return Err(input(format!(
                    "no reference classifier for data.kind {}: train one with `difflab eval train-reference --config CONFIG` and pass --classifier PATH",
                    c.data.kind.name()
                )));
            }
        };
        let classifier = ReferenceClassifier::load(&weights, torch_device)?;
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
    let text = serde_json::to_string_pretty(&report).expect("reports serialise") + "\n";
    let path = out.join("eval.json");
    std::fs::write(&path, &text).map_err(|e| EvalError::file(&path, e))?;
    Ok((report, path))
}

/// Sample for the evaluation through the library (`difflab_sampling::sample_classes`): once,
/// or once per class with N/K samples each. Returns sample.json of each run.
fn draw_samples(
    args: &EvalRequest,
    run: &Path,
    dir: &Path,
    n: usize,
    classes: Option<&[i64]>,
    device: Device,
) -> Result<serde_json::Value, EvalError> {
    // A checkpoint names its run; otherwise the run's latest checkpoint.
    let path = args.checkpoint.clone().unwrap_or_else(|| run.to_path_buf());
    let sampler = args.sampler;
    let request = SampleRequest {
        source: SampleSource::Run {
            path,
            weights: if args.raw {
                WeightsKind::Raw
            } else {
                WeightsKind::Ema
            },
        },
        settings: CliStageSettings {
            sampler: SamplerKeys {
                kind: sampler,
                steps: args.steps,
                eta: args.eta,
                ..SamplerKeys::default()
            },
            ..CliStageSettings::default()
        },
        cond_image: None,
        num_images: n,
        batch_size: args.batch_size,
        seed: args.seed,
        noise: None,
        trajectory: false,
        offload: false,
        out: dir.to_path_buf(),
        command: std::env::args().collect(),
        // The evaluation's own sample folder: a rerun replaces what the last one sampled.
        output: OutputMode::Overwrite,
    };
    eprintln!("sampling {n} into {}", dir.display());
    let records = sample_classes(&request, classes, device, &mut |_, _, _, _| {})
        .map_err(|e| input(e.to_string()))?;
    Ok(json!(records))
}

/// The samples of a folder, with the class of each when `classes` is given (subfolders
/// class-KK/, or the whole folder when it has no such subfolder and one class is asked for).
fn read_folder_with_classes(
    dir: &Path,
    classes: Option<&[i64]>,
) -> Result<(Tensor, Option<Tensor>), EvalError> {
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
