//! A whole sampling request, as `difflab sample` and `difflab eval` make it: where the model
//! comes from, the settings, how many images from which seed, and the folder to write the
//! images, the grid and `sample.json` to.

use std::path::{Path, PathBuf};

use difflab_data::images::{grid_columns, save_grid, save_images};
use difflab_data::load_image;
use difflab_samplers::{DdimConfig, SamplerConfig, StepInfo};
use difflab_schedulers::TimestepSpacing;
use serde_json::json;
use tch::{Device, Tensor};

use crate::cascade::{
    CascadeManifest, CascadeObserver, CliStageSettings, PlannedStage, StageSpec, StageWeights,
    run_cascade,
};
use crate::output_folder::{OutputFolder, OutputMode};
use crate::{
    DiffusersModelSpec, EnsembleSpec, JobOptions, ModelInfo, NoiseMode, SamplingError, StageModel,
    StageOutput, WeightsKind, load_diffusers_model, load_input_images,
};
use difflab_pipeline::memory;

/// Where the model of a [`SampleRequest`] comes from.
#[derive(Clone, Debug)]
pub enum SampleSource {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    Run {
        /// The run or checkpoint directory.
        path: PathBuf,
        /// EMA or raw weights.
        weights: WeightsKind,
    },
    /// A diffusers `UNet2DModel` folder and how it was trained.
    Diffusers {
        /// The folder.
        dir: PathBuf,
        /// Its schedule and prediction.
        spec: DiffusersModelSpec,
    },
    /// A cascade manifest (`stages:`, optionally only `cascade`, e.g. `base+sr`) or an expert
    /// ensemble manifest (`experts:`).
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// The cascade stages to run.
        cascade: Option<String>,
    },
}

/// Everything a sampling run needs.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    /// The model.
    pub source: SampleSource,
    /// Per-stage settings from the command line (sampler overrides, guidance, class, labels,
    /// SR noise level).
    pub settings: CliStageSettings,
    /// Input images of the first stage (a file or a folder).
    pub cond_image: Option<PathBuf>,
    /// Images.
    pub num_images: usize,
    /// Images per forward pass (default: all).
    pub batch_size: Option<usize>,
    /// The seed.
    pub seed: u64,
    /// How noise is drawn (default: per image, torch-global for diffusers models).
    pub noise: Option<NoiseMode>,
    /// Also write trajectory.png.
    pub trajectory: bool,
    /// Load each cascade stage only while it runs.
    pub offload: bool,
    /// The output folder.
    pub out: PathBuf,
    /// The command that made the request, for `sample.json`.
    pub command: Vec<String>,
    /// What to do when the output folder already holds files.
    pub output: OutputMode,
}

/// Progress: `(stage name, batch index, number of batches, the step just taken)`.
pub type OnSampleStep<'a> = dyn FnMut(&str, usize, usize, &StepInfo<'_>) + 'a;

/// What [`sample_to_folder`] did.
#[derive(Clone, Debug)]
pub struct SampleSummary {
    /// Each stage's name and number of denoiser evaluations.
    pub stages: Vec<(String, usize)>,
    /// The `sample.json` written, whose content this returns too.
    pub record: serde_json::Value,
}

/// The stages to run and how.
struct Plan {
    stages: Vec<PlannedStage>,
    preloaded: Vec<StageWeights>,
    offload: bool,
    noise: NoiseMode,
}

/// Does this YAML file hold a cascade (`stages:`) or an ensemble (`experts:`)?
fn manifest_kind(path: &Path) -> Result<&'static str, SamplingError> {
    let text = std::fs::read_to_string(path).map_err(|error| SamplingError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let top: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        serde_saphyr::from_str(&text).map_err(|e| SamplingError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    match (top.contains_key("stages"), top.contains_key("experts")) {
        (true, false) => Ok("cascade"),
        (false, true) => Ok("ensemble"),
        _ => Err(SamplingError::invalid(format!(
            "{}: not a cascade manifest (top-level `stages:`) or an ensemble manifest (`experts:`)",
            path.display()
        ))),
    }
}

fn plan(request: &SampleRequest, device: Device) -> Result<Plan, SamplingError> {
    let noise = request.noise.unwrap_or_default();
    let single = |stages: Vec<PlannedStage>| Plan {
        preloaded: Vec::new(),
        stages,
        offload: request.offload,
        noise,
    };
    match &request.source {
        SampleSource::Diffusers { dir, spec } => {
            spec.schedule.build()?;
            let spec = DiffusersModelSpec {
                sampler: SamplerConfig::Ddim(DdimConfig {
                    spacing: TimestepSpacing::Leading,
                    ..DdimConfig::default()
                }),
                ..spec.clone()
            };
            let model = load_diffusers_model(dir, spec, device)?;
            let stage = PlannedStage::of("model", StageSpec::Single(model.info.clone()));
            Ok(Plan {
                stages: vec![stage],
                preloaded: vec![StageWeights::Loaded(StageModel::Single(model))],
                offload: false,
                noise: request.noise.unwrap_or(NoiseMode::TorchGlobal),
            })
        }
        SampleSource::Run { path, weights } => {
            let info = ModelInfo::from_run(path, *weights)?;
            Ok(single(vec![PlannedStage::of(
                "model",
                StageSpec::Single(info),
            )]))
        }
        SampleSource::Manifest { path, cascade } => match manifest_kind(path)? {
            "ensemble" => {
                if cascade.is_some() {
                    return Err(SamplingError::invalid(format!(
                        "--cascade applies to cascade manifests; {} is an ensemble manifest",
                        path.display()
                    )));
                }
                let spec = StageSpec::Ensemble(EnsembleSpec::open(path)?);
                Ok(single(vec![PlannedStage::of("ensemble", spec)]))
            }
            _ => {
                let manifest = CascadeManifest::open(path)?;
                let stages = manifest.plan(path, cascade.as_deref())?;
                Ok(Plan {
                    stages,
                    preloaded: Vec::new(),
                    offload: request.offload || manifest.offload,
                    noise,
                })
            }
        },
    }
}

/// The input images of the first stage, read at the size it wants them.
fn input_images(
    request: &SampleRequest,
    first: &ModelInfo,
) -> Result<Option<tch::Tensor>, SamplingError> {
    let Some(path) = &request.cond_image else {
        return Ok(None);
    };
    let shape = match &first.lowres {
        Some(low) => low.shape.clone(),
        None if first.conditioning.cond_channels > 0 => vec![
            first.conditioning.cond_channels,
            first.shape[1],
            first.shape[2],
        ],
        None if first.shape.len() == 3 => first.shape.clone(),
        None => {
            return Err(SamplingError::invalid(format!(
                "--cond-image: {} does not take images",
                first.label
            )));
        }
    };
    Ok(Some(load_input_images(path, shape[2], shape[0])?))
}

/// The job's identity, recorded in `sample.json` and compared by `--resume`: the source, the
/// command-line settings, the input images, the count, the seed and noise, and each stage's
/// resolved model (checkpoint and weights hash).
fn identity(
    request: &SampleRequest,
    stages: &[PlannedStage],
    noise: NoiseMode,
) -> Result<serde_json::Value, SamplingError> {
    let source = match &request.source {
        SampleSource::Run { path, weights } => json!({"run": path, "weights": weights}),
        SampleSource::Diffusers { dir, spec } => json!({
            "diffusers": dir,
            "schedule": spec.schedule,
            "prediction": spec.prediction,
        }),
        SampleSource::Manifest { path, cascade } => json!({"manifest": path, "cascade": cascade}),
    };
    let settings = &request.settings;
    let models = stages
        .iter()
        .map(|s| {
            Ok(json!({
                "name": s.name,
                "model": s.spec.info().record,
                "weights_sha256": s.spec.weights_digest()?,
            }))
        })
        .collect::<Result<Vec<_>, SamplingError>>()?;
    Ok(json!({
        "source": source,
        "sampler": settings.sampler,
        "guidance": settings.guidance,
        "class": settings.class,
        "labels": settings.labels,
        "noise_level": settings.noise_level,
        "cond_image": request.cond_image,
        "num_images": request.num_images,
        "seed": request.seed,
        "noise": noise,
        "models": models,
    }))
}

/// Writes each stage's images into the output folder as batches finish, its grid (or
/// `samples.csv`) when the stage finishes, and keeps `sample.json`'s file list current.
struct FolderWriter<'a, 'b> {
    folder: OutputFolder,
    /// Each stage's folder (the last stage's is the output folder itself).
    dirs: Vec<PathBuf>,
    num_images: usize,
    first_image: usize,
    running: serde_json::Value,
    identity: &'a serde_json::Value,
    on_step: &'a mut OnSampleStep<'b>,
}

impl FolderWriter<'_, '_> {
    /// The stage's images `0..first_image`, written by the interrupted job this one finishes.
    fn earlier_images(&self, dir: &Path, shape: &[i64]) -> Result<Option<Tensor>, SamplingError> {
        if self.first_image == 0 {
            return Ok(None);
        }
        let (c, r) = (shape[0] as usize, shape[1] as usize);
        let images = (0..self.first_image)
            .map(|i| {
                let data = load_image(&dir.join(format!("{i:06}.png")), r, c)?;
                Ok(Tensor::from_slice(&data).reshape(shape))
            })
            .collect::<Result<Vec<_>, SamplingError>>()?;
        Ok(Some(Tensor::stack(&images, 0)))
    }
}

impl CascadeObserver for FolderWriter<'_, '_> {
    fn step(&mut self, stage: &str, batch: usize, batches: usize, info: &StepInfo<'_>) {
        (self.on_step)(stage, batch, batches, info);
    }

    fn batch_done(
        &mut self,
        stage: usize,
        range: std::ops::Range<usize>,
        samples: &Tensor,
    ) -> Result<(), SamplingError> {
        if samples.dim() != 4 {
            return Ok(()); // vectors go to samples.csv when the stage is done
        }
        for path in save_images(samples, &self.dirs[stage], range.start)? {
            self.folder.add(&path);
        }
        self.folder
            .write_record(self.running.clone(), self.identity, "running")
    }

    fn stage_done(&mut self, stage: usize, output: &StageOutput) -> Result<(), SamplingError> {
        let dir = self.dirs[stage].clone();
        let x = &output.samples;
        if x.dim() == 4 {
            let all = match self.earlier_images(&dir, &x.size()[1..])? {
                Some(earlier) => Tensor::cat(&[earlier, x.shallow_clone()], 0),
                None => x.shallow_clone(),
            };
            let grid = dir.join("grid.png");
            save_grid(&all, grid_columns(self.num_images), &grid)?;
            self.folder.add(&grid);
        } else {
            let path = dir.join("samples.csv");
            let rows = Vec::<Vec<f32>>::try_from(x.flatten(1, -1))
                .map_err(|e| SamplingError::invalid(format!("samples to rows: {e}")))?;
            let text: String = rows
                .iter()
                .map(|r| r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n")
                .collect();
            std::fs::create_dir_all(&dir)
                .and_then(|()| difflab_pipeline::files::write_atomic(&path, text.as_bytes()))
                .map_err(|e| SamplingError::invalid(format!("{}: {e}", path.display())))?;
            self.folder.add(&path);
        }
        self.folder
            .write_record(self.running.clone(), self.identity, "running")
    }
}

/// Check, before anything is allocated, that a stage fits in memory: its `[N, ...shape]`
/// samples are held on the CPU until the job ends (the grid, the next cascade stage), and on
/// the CPU one batch's activations too. Lower bounds (see [`difflab_pipeline::memory`]).
fn check_stage_memory(
    stage: &PlannedStage,
    n: usize,
    batch: usize,
    device: Device,
) -> Result<(), SamplingError> {
    let info = stage.spec.info();
    let elements: f64 = info.shape.iter().map(|&d| d as f64).product();
    let mut bytes = 4.0 * n as f64 * elements;
    if device == Device::Cpu {
        let side = info.shape.get(1).copied().unwrap_or(1);
        bytes += 4.0 * batch as f64 * memory::activation_floor(&info.model, side, false);
    }
    memory::check_fits(
        &format!(
            "sampling {n} images in batches of {batch} (stage {})",
            stage.name
        ),
        bytes,
    )
    .map_err(SamplingError::invalid)
}

/// Run `request` on `device`: every stage's images into the output folder (the last stage's
/// as `000000.png`, …, `grid.png` or `samples.csv`; earlier cascade stages under
/// `stages/<name>/`), `trajectory.png` when asked, and `sample.json` recording the model, its
/// weights' hash, every setting, the timesteps and the files written. Images are written as
/// each batch finishes; the folder follows [`OutputMode`] (see [`crate::output_folder`]).
pub fn sample_to_folder(
    request: &SampleRequest,
    device: Device,
    on_step: &mut OnSampleStep<'_>,
) -> Result<SampleSummary, SamplingError> {
    let n = request.num_images;
    if n == 0 {
        return Err(SamplingError::invalid("-n/--num-images must be at least 1"));
    }
    let batch = request.batch_size.unwrap_or(n).min(n);
    if batch == 0 {
        return Err(SamplingError::invalid("--batch-size must be at least 1"));
    }
    let Plan {
        stages,
        preloaded,
        offload,
        noise,
    } = plan(request, device)?;
    let settings = &request.settings;
    if settings.noise_level.is_some() && stages.iter().all(|s| s.spec.info().lowres.is_none()) {
        return Err(SamplingError::invalid(
            "--noise-level applies to super-resolution stages, and none is being sampled",
        ));
    }
    for stage in &stages {
        check_stage_memory(stage, n, batch, device)?;
    }
    let identity = identity(request, &stages, noise)?;
    let (folder, done) = OutputFolder::open(&request.out, request.output, &identity, "")?;
    if done > 0 && noise == NoiseMode::TorchGlobal {
        return Err(SamplingError::invalid(format!(
            "--resume: {} was sampled with torch-global noise, where each image's noise depends on every image before it; only per-image noise can be resumed exactly: pass --overwrite",
            request.out.display()
        )));
    }
    // A finished job (or one killed after its last image) makes its last image again: the
    // grid and the record are then written from the same code path.
    let first_image = done.min(n - 1);
    let input = input_images(request, stages[0].spec.info())?;
    let options = JobOptions {
        trajectory: request.trajectory && first_image == 0,
        first_image,
        ..JobOptions::new(n, batch, request.seed, noise)
    };
    let last = stages.len() - 1;
    let out = &request.out;
    let dirs: Vec<PathBuf> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| match i == last {
            true => out.clone(),
            false => out.join("stages").join(&s.name),
        })
        .collect();
    let running = json!({
        "difflab_version": env!("CARGO_PKG_VERSION"),
        "command": request.command,
        "num_images": n,
    });
    let mut writer = FolderWriter {
        folder,
        dirs,
        num_images: n,
        first_image,
        running,
        identity: &identity,
        on_step,
    };
    // Nothing is written before the first batch is done: a job that fails its checks leaves
    // the folder as it was.
    let outputs = run_cascade(
        &stages,
        preloaded,
        settings,
        input,
        &options,
        offload,
        device,
        &mut writer,
    )?;
    let mut folder = writer.folder;
    if let Some(t) = &outputs[last].trajectory {
        let path = out.join("trajectory.png");
        t.save(&path)?;
        folder.add(&path);
    }
    let record = json!({
        "difflab_version": env!("CARGO_PKG_VERSION"),
        "command": request.command,
        "seed": request.seed,
        "noise": noise,
        "noise_scheme": match noise {
            NoiseMode::PerImage => "image i: ChaCha8 stream seeded with splitmix(seed, i); draws in order: SR augmentation noise, x_T, one per stochastic step",
            NoiseMode::TorchGlobal => "torch.manual_seed(seed); randn([n, ...]) for x_T on the CPU generator, then each batch's draws in order",
        },
        "num_images": n,
        "batch_size": batch,
        "resumed_at_image": first_image,
        "device": format!("{device:?}"),
        "offload": offload,
        "stages": stages.iter().zip(&outputs).map(|(s, o)| {
            let mut r = o.record.clone();
            r["name"] = json!(s.name);
            r["output_shape"] = json!(o.samples.size()[1..]);
            r
        }).collect::<Vec<_>>(),
    });
    folder.write_record(record.clone(), &identity, "complete")?;
    Ok(SampleSummary {
        stages: stages
            .iter()
            .zip(&outputs)
            .map(|(s, o)| (s.name.clone(), o.timesteps.len()))
            .collect(),
        record,
    })
}

/// The folder of class `k`'s samples in an evaluation's sample folder.
pub fn class_dir(root: &Path, k: i64) -> PathBuf {
    root.join(format!("class-{k:02}"))
}

/// Draw the samples an evaluation measures: `request` as it is (its `num_images` into
/// `request.out`), or, for a class-conditional model and `classes`, `num_images / K` images of
/// each class `k` (seed `request.seed + k`) into `class-KK/` under `request.out`. Returns the
/// `sample.json` record of each run.
pub fn sample_classes(
    request: &SampleRequest,
    classes: Option<&[i64]>,
    device: Device,
    on_step: &mut OnSampleStep<'_>,
) -> Result<Vec<serde_json::Value>, SamplingError> {
    let Some(list) = classes else {
        return Ok(vec![sample_to_folder(request, device, on_step)?.record]);
    };
    let per = request.num_images / list.len().max(1);
    if per == 0 {
        return Err(SamplingError::invalid(format!(
            "{} samples cannot be split over {} classes: ask for at least one per class",
            request.num_images,
            list.len()
        )));
    }
    list.iter()
        .map(|&k| {
            let mut one = request.clone();
            one.num_images = per;
            one.seed = request.seed + k as u64;
            one.settings.class = Some(k);
            one.out = class_dir(&request.out, k);
            Ok(sample_to_folder(&one, device, on_step)?.record)
        })
        .collect()
}
