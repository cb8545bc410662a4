//! One stage's sampling job: resolve its settings against the model, build the sampler and
//! the (guided) denoiser, and run the batches with reproducible noise.

use std::ops::Range;

use difflab_samplers::{
    ClassifierFreeGuidance, Conditioning, Denoiser, NoiseSource, SampleError, Sampler,
    SamplerConfig, SamplerKind, StepInfo,
};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{JobNoise, ModelInfo, NoiseMode, SamplingError, StageModel, Trajectory};
use crate::cascade::augment_at_level;
use difflab_data::open_dataset;
use difflab_pipeline::config::ProcessConfig;
use difflab_pipeline::config::check_sample_level;

/// Which class each image is conditioned on (class-conditional models).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassChoice {
    /// Image `i` gets class `i mod num_classes` (a grid shows every class).
    #[default]
    Cycle,
    /// Every image gets this class.
    Fixed(i64),
}

/// A stage's settings after merging the run, the manifest and the command line.
#[derive(Clone, Debug, Serialize)]
pub struct StageSettings {
    /// The sampler.
    pub sampler: SamplerConfig,
    /// Classifier-free guidance weight w (1 = the plain conditional model).
    pub guidance: f64,
    /// Class per image.
    pub class: ClassChoice,
    /// The label vector of every image (multi-hot models).
    pub labels: Option<Vec<f32>>,
    /// SR stages: the augmentation level of the low-resolution input (default: the run's
    /// `training.lowres_noise.sample`).
    pub noise_level: Option<f64>,
}

impl StageSettings {
    /// Every check of these settings against the model that needs no input images: guidance
    /// needs label dropout, a class must exist, a label vector must have the model's length,
    /// a noise level must lie in an SR stage's trained range, the cold sampler goes with a
    /// cold-diffusion run. A cascade runs it for every stage before it writes anything.
    pub fn check(&self, info: &ModelInfo) -> Result<(), SamplingError> {
        let label = &info.label;
        let bad = |m: String| Err(SamplingError::invalid(format!("{label}: {m}")));
        let spec = &info.conditioning;
        if self.guidance != 1.0 && !spec.supports_guidance() {
            return bad(format!(
                "guidance {} needs a conditional model trained with label dropout (null_class: true, or label vectors); this one has {spec:?}",
                self.guidance
            ));
        }
        match (spec.num_classes, self.class) {
            (Some(n), ClassChoice::Fixed(k)) if !(0..n).contains(&k) => {
                return bad(format!(
                    "class {k} is out of range: the model has classes 0..{}",
                    n - 1
                ));
            }
            (None, ClassChoice::Fixed(k)) => {
                return bad(format!(
                    "class {k} given but the model is not class-conditional"
                ));
            }
            _ => {}
        }
        match (spec.label_dim, &self.labels) {
            (Some(d), Some(v)) if v.len() as i64 != d => {
                return bad(format!(
                    "--labels has {} entries but the model's label_dim is {d}",
                    v.len()
                ));
            }
            (Some(d), None) => {
                return bad(format!(
                    "the model is conditioned on a {d}-entry label vector: pass --labels (comma-separated 0/1)"
                ));
            }
            (None, Some(_)) => {
                return bad("--labels given but the model has no label vector".into());
            }
            _ => {}
        }
        if spec.context_dim.is_some() {
            return bad("models conditioned on a context vector cannot be sampled from the command line yet".into());
        }
        match (&info.lowres, self.noise_level) {
            (Some(low), level) => {
                let level = level.unwrap_or(low.sample_level);
                check_sample_level(level, low.train_max)
                    .or_else(|e| bad(format!("noise level {level}: {e}")))?;
            }
            (None, Some(_)) => {
                return bad(
                    "a noise level is set but the model is not a super-resolution stage".into(),
                );
            }
            (None, None) => {}
        }
        match (&info.process, self.sampler.kind()) {
            (ProcessConfig::Gaussian, SamplerKind::Cold) => {
                bad("the cold sampler needs a cold-diffusion run (process.kind: cold)".into())
            }
            (ProcessConfig::Cold { .. }, kind) if kind != SamplerKind::Cold => bad(format!(
                "a cold-diffusion run samples with the cold sampler, not {kind} (use --sampler cold)"
            )),
            _ => Ok(()),
        }
    }
}

/// How many images, in which batches, from which seed.
#[derive(Clone, Debug, Serialize)]
pub struct JobOptions {
    /// Images to generate.
    pub num_images: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    /// The seed.
    pub seed: u64,
    /// How noise is drawn from the seed.
    pub noise: NoiseMode,
    /// Record a trajectory strip of the first images.
    pub trajectory: bool,
    /// Images `0..first_image` were made earlier (a resumed job) and are skipped: the job
    /// samples images `first_image..num_images`. Exact only with per-image noise, where image
    /// `i` depends on `(seed, i)` alone.
    pub first_image: usize,
    /// The image index of the input's first row: `0` for input images (image `i` uses row
    /// `i mod M`), `first_image` for a previous stage's output in a cascade.
    pub input_first: usize,
}

impl JobOptions {
    /// All `num_images` images in batches of `batch_size`.
    pub fn new(num_images: usize, batch_size: usize, seed: u64, noise: NoiseMode) -> Self {
        Self {
            num_images,
            batch_size,
            seed,
            noise,
            trajectory: false,
            first_image: 0,
            input_first: 0,
        }
    }
}

/// What a stage produced.
pub struct StageOutput {
    /// The samples, on the CPU, `[N, ...shape]`.
    pub samples: Tensor,
    /// The trajectory, when asked for.
    pub trajectory: Option<Trajectory>,
    /// The timesteps (or cold levels) the denoiser was evaluated at.
    pub timesteps: Vec<i64>,
    /// The settings used, with defaults filled in (for `sample.json`).
    pub record: serde_json::Value,
}

/// What a sampling job tells its caller as it runs: a progress bar follows the steps, a writer
/// saves each batch as it finishes (so an interrupted job keeps what it made).
pub trait JobObserver {
    /// Step `info` of batch `batch` (of `batches`) was taken.
    fn step(&mut self, batch: usize, batches: usize, info: &StepInfo<'_>) {
        let _ = (batch, batches, info);
    }
    /// Images `range` (indices within the job) are done: `samples`, on the CPU.
    fn batch_done(&mut self, range: Range<usize>, samples: &Tensor) -> Result<(), SamplingError> {
        let _ = (range, samples);
        Ok(())
    }
}

/// Observes nothing (previews).
impl JobObserver for () {}

/// Run one stage. `input` (`[M, C, h, w]` on the CPU, in [−1, 1]) is the low-resolution image
/// of an SR stage, the conditioning image of an image-to-image model, or the clean images a
/// cold-diffusion run is degraded from (default: its training data); image `i` uses input
/// `i mod M`.
pub fn sample_stage(
    model: &StageModel,
    settings: &StageSettings,
    input: Option<&Tensor>,
    options: &JobOptions,
    device: Device,
    observer: &mut dyn JobObserver,
) -> Result<StageOutput, SamplingError> {
    let denoiser = model.denoiser()?;
    let mut output = sample_with(
        model.info(),
        denoiser,
        settings,
        input,
        options,
        device,
        observer,
    )?;
    output.record["model"] = model.record();
    Ok(output)
}

/// [`sample_stage`] with the network already in hand as a [`Denoiser`] (`base`, the model
/// `info` describes): what the trainer's previews run with the EMA network in memory.
pub fn sample_with(
    info: &ModelInfo,
    base: Box<dyn Denoiser + '_>,
    settings: &StageSettings,
    input: Option<&Tensor>,
    options: &JobOptions,
    device: Device,
    observer: &mut dyn JobObserver,
) -> Result<StageOutput, SamplingError> {
    let plan = BatchInputs::new(info, settings, input, options, device)?;
    let (sampler, noise_level) = (&plan.sampler, plan.noise_level);
    let denoiser: Box<dyn Denoiser + '_> = if settings.guidance == 1.0 {
        base
    } else {
        let null = info.conditioning.num_classes.unwrap_or(0);
        Box::new(ClassifierFreeGuidance::new(base, settings.guidance, null))
    };
    if options.num_images == 0
        || options.batch_size == 0
        || options.first_image >= options.num_images
    {
        return Err(SamplingError::invalid(
            "the number of images and the batch size must be at least 1, and some images left to make",
        ));
    }
    let mut noise = JobNoise::new(options.noise, options.seed);
    // One global stream: x_T of all images first, as a diffusers pipeline draws it.
    let all_starts = match &mut noise {
        JobNoise::Global(g) => Some(plan.start(0..options.num_images, g)?),
        JobNoise::PerImage { .. } => None,
    };
    let first_image = options.first_image;
    let batches = (options.num_images - first_image).div_ceil(options.batch_size);
    let mut trajectory = options
        .trajectory
        .then(|| Trajectory::new(4, 8, sampler.timesteps().len()));
    let mut outputs = Vec::with_capacity(batches);
    for b in 0..batches {
        let first = first_image + b * options.batch_size;
        let range = first..(first + options.batch_size).min(options.num_images);
        let x = noise.with_batch(range.start, range.len(), |source| {
            let cond = plan.conditioning(range.clone(), source)?;
            let start = match &all_starts {
                Some(all) => all.narrow(0, range.start as i64, range.len() as i64),
                None => plan.start(range.clone(), source)?,
            };
            let mut step = |s: &StepInfo<'_>| {
                if b == 0
                    && let Some(t) = trajectory.as_mut()
                {
                    t.observe(s);
                }
                observer.step(b, batches, s);
            };
            sampler
                .sample(denoiser.as_ref(), start, &cond, source, &mut step)
                .map_err(|e| match e {
                    // Typed, so a trainer's preview can tell a diverged model apart.
                    e @ SampleError::NonFinite { .. } => SamplingError::Sample(e),
                    e => SamplingError::invalid(format!(
                        "{}: batch {} of {batches}: {e}",
                        info.label,
                        b + 1
                    )),
                })
        })?;
        let x = x.to_device(Device::Cpu);
        observer.batch_done(range, &x)?;
        outputs.push(x);
    }
    let record = serde_json::json!({
        "model": info.record,
        "prediction": info.prediction,
        "schedule": info.schedule,
        "process": info.process,
        "sampler": settings.sampler,
        "guidance": settings.guidance,
        "class": if info.conditioning.num_classes.is_some() { serde_json::to_value(settings.class).unwrap_or_default() } else { serde_json::Value::Null },
        "labels": settings.labels,
        "noise_level": noise_level,
        "timesteps": sampler.timesteps(),
    });
    Ok(StageOutput {
        samples: Tensor::cat(&outputs, 0),
        trajectory,
        timesteps: sampler.timesteps().to_vec(),
        record,
    })
}

/// Everything that turns an image range into the sampler's start and conditioning.
struct BatchInputs {
    sampler: Box<dyn Sampler>,
    shape: Vec<i64>,
    device: Device,
    class: Option<ClassChoice>,
    num_classes: i64,
    labels: Option<Tensor>,
    /// SR low-resolution input or image-to-image conditioning image, `[M, ...]`.
    cond_image: Option<Tensor>,
    /// The image index of the input's first row (see [`JobOptions::input_first`]).
    input_first: usize,
    noise_level: Option<f64>,
    /// Cold diffusion: clean images `[M, ...]`, the image index of their first row, and the
    /// degradation.
    cold: Option<(Tensor, usize, Box<dyn difflab_schedulers::Degradation>)>,
}

/// Rows of `x` for images `range`, when row 0 is image `first`: image `i` uses row
/// `(i - first) mod M`.
fn rows(x: &Tensor, first: usize, range: &Range<usize>, device: Device) -> Tensor {
    let m = x.size()[0];
    let idx: Vec<i64> = range
        .clone()
        .map(|i| i.saturating_sub(first) as i64 % m)
        .collect();
    x.index_select(0, &Tensor::from_slice(&idx))
        .to_device(device)
}

impl BatchInputs {
    fn new(
        info: &ModelInfo,
        settings: &StageSettings,
        input: Option<&Tensor>,
        options: &JobOptions,
        device: Device,
    ) -> Result<Self, SamplingError> {
        settings.check(info)?;
        let label = &info.label;
        let spec = &info.conditioning;
        let class = spec.num_classes.map(|_| settings.class);
        let labels = settings.labels.as_deref().map(Tensor::from_slice);
        let check_input = |want: &[i64], what: &str| -> Result<Tensor, SamplingError> {
            let Some(x) = input else {
                return Err(SamplingError::invalid(format!(
                    "{label}: {what} needs input images of shape {want:?}: pass --cond-image, or run it after a stage that produces them"
                )));
            };
            if x.size()[1..] != *want {
                return Err(SamplingError::invalid(format!(
                    "{label}: {what} expects input images of shape {want:?}, got {:?}",
                    &x.size()[1..]
                )));
            }
            Ok(x.shallow_clone())
        };
        let (cond_image, noise_level) = match &info.lowres {
            Some(low) => {
                let level = settings.noise_level.unwrap_or(low.sample_level);
                (
                    Some(check_input(&low.shape, "this super-resolution stage")?),
                    Some(level),
                )
            }
            None if spec.cond_channels > 0 => {
                let want = [spec.cond_channels, info.shape[1], info.shape[2]];
                (
                    Some(check_input(&want, "this image-conditioned model")?),
                    None,
                )
            }
            None => (None, None),
        };
        let schedule = info.schedule.build()?;
        let (sampler, cold) = match &info.process {
            ProcessConfig::Gaussian => (settings.sampler.build(&schedule, None)?, None),
            ProcessConfig::Cold { degradation } => {
                let clean = match input.filter(|_| cond_image.is_none()) {
                    Some(x) => check_input(&x.size()[1..], "cold sampling").and_then(|x| {
                        if x.size()[1..] == info.shape[..] {
                            Ok(x)
                        } else {
                            Err(SamplingError::invalid(format!(
                                "{label}: cold sampling starts from images of shape {:?}, got {:?}",
                                info.shape,
                                &x.size()[1..]
                            )))
                        }
                    })?,
                    None => data_examples(info, options.num_images)?,
                };
                let first = if input.is_some() {
                    options.input_first
                } else {
                    0
                };
                let sampler = settings
                    .sampler
                    .build(&schedule, Some(degradation.build(&schedule, device)?))?;
                (
                    sampler,
                    Some((clean, first, degradation.build(&schedule, device)?)),
                )
            }
        };
        Ok(Self {
            sampler,
            shape: info.shape.clone(),
            device,
            class,
            num_classes: spec.num_classes.unwrap_or(1),
            labels,
            cond_image,
            input_first: options.input_first,
            noise_level,
            cold,
        })
    }

    /// The conditioning of images `range`; an SR stage draws its augmentation noise first.
    fn conditioning(
        &self,
        range: Range<usize>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Conditioning, SamplingError> {
        let b = range.len() as i64;
        let d = self.device;
        let class_labels = self.class.map(|c| match c {
            ClassChoice::Fixed(k) => Tensor::full([b], k, (Kind::Int64, d)),
            ClassChoice::Cycle => {
                Tensor::arange_start(range.start as i64, range.end as i64, (Kind::Int64, d))
                    .remainder(self.num_classes)
            }
        });
        let label_vector = self
            .labels
            .as_ref()
            .map(|v| v.unsqueeze(0).expand([b, -1], false).to_device(d));
        let (image, noise_level) = match (&self.cond_image, self.noise_level) {
            (Some(lowres), Some(level)) => {
                let low = rows(lowres, self.input_first, &range, d);
                let (z, s) = augment_at_level(&low, level, noise);
                (Some(z), Some(s))
            }
            (Some(image), None) => (Some(rows(image, self.input_first, &range, d)), None),
            _ => (None, None),
        };
        Ok(Conditioning {
            class_labels,
            label_vector,
            image,
            context: None,
            noise_level,
        })
    }

    /// x_T of images `range`: Gaussian noise, or the clean images degraded to the top level.
    fn start(
        &self,
        range: Range<usize>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SamplingError> {
        let mut shape = vec![range.len() as i64];
        shape.extend(&self.shape);
        let z = noise.draw(&shape, Kind::Float, self.device);
        Ok(match &self.cold {
            None => z,
            Some((clean, first, degradation)) => {
                let x0 = rows(clean, *first, &range, self.device);
                let top = Tensor::full(
                    [range.len() as i64],
                    degradation.num_steps(),
                    (Kind::Int64, self.device),
                );
                degradation.degrade(&x0, &top, Some(&z))
            }
        })
    }
}

/// The first `n` examples of a run's training data (cold-diffusion starts).
fn data_examples(info: &ModelInfo, n: usize) -> Result<Tensor, SamplingError> {
    let Some(data) = &info.data else {
        return Err(SamplingError::invalid(format!(
            "{}: cold sampling needs start images: pass --cond-image",
            info.label
        )));
    };
    let dataset = open_dataset(data, 0)?;
    let shape = dataset.shape();
    let m = n.min(dataset.len());
    let rows = (0..m)
        .map(|i| {
            dataset
                .get(i)
                .map(|e| Tensor::from_slice(&e.data).reshape(&shape[..]))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::stack(&rows, 0))
}
