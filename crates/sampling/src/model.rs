//! A trained model ready to sample from: where its weights are, what it was trained with
//! (schedule, objective, process, data shape), what it must be conditioned on — and, once
//! loaded, the network itself.

use std::path::{Path, PathBuf};

use difflab_models::{UNetConfig, load_diffusers_unet};
use difflab_samplers::SamplerConfig;
use difflab_schedulers::{Prediction, ScheduleConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, nn};

use super::SamplingError;
use difflab_data::DataConfig;
use difflab_pipeline::checkpoint::{EMA_FILE, MODEL_FILE, load_weights, sha256_file};
use difflab_pipeline::checkpoint::{RunDir, resolve_checkpoint};
use difflab_pipeline::config::ProcessConfig;
use difflab_pipeline::config::load_recorded_config;
use difflab_pipeline::{ExperimentConfig, ModelConfig, Network};

/// Which weights of a difflab checkpoint to sample with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsKind {
    /// The exponential moving average (what papers sample from).
    #[default]
    Ema,
    /// The raw optimizer weights.
    Raw,
}

impl WeightsKind {
    /// The file of these weights inside a checkpoint directory.
    pub fn file(self) -> &'static str {
        match self {
            Self::Ema => EMA_FILE,
            Self::Raw => MODEL_FILE,
        }
    }
}

/// What a model is conditioned on: what a caller must supply, and what experts of one
/// ensemble must share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConditioningSpec {
    /// Number of classes of a class-conditional model.
    pub num_classes: Option<i64>,
    /// Whether it has the extra "no class" row trained by label dropout (needed for guidance).
    pub null_class: bool,
    /// Length of the multi-hot label vector.
    pub label_dim: Option<i64>,
    /// Channels of an extra conditioning image (not counting an SR stage's low-resolution input).
    pub cond_channels: i64,
    /// Width of a context vector.
    pub context_dim: Option<i64>,
}

impl ConditioningSpec {
    fn of(unet: &UNetConfig) -> Self {
        Self {
            num_classes: unet.num_classes,
            null_class: unet.null_class,
            label_dim: unet.label_dim,
            cond_channels: unet.cond_channels,
            context_dim: unet.context_dim,
        }
    }

    /// True when classifier-free guidance has an "unconditional" input to contrast with.
    pub fn supports_guidance(&self) -> bool {
        (self.num_classes.is_some() && self.null_class)
            || self.label_dim.is_some()
            || self.context_dim.is_some()
    }
}

/// The low-resolution input of a super-resolution stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LowresSpec {
    /// `[C, h, w]` of the low-resolution image.
    pub shape: Vec<i64>,
    /// The largest augmentation level seen in training.
    pub train_max: f64,
    /// The run's default sampling level.
    pub sample_level: f64,
}

/// Where the weights come from.
#[derive(Clone, Debug)]
enum WeightsSource {
    /// A difflab safetensors file with the network's own parameter names.
    Difflab(PathBuf),
    /// A diffusers `UNet2DModel` folder.
    Diffusers(PathBuf),
}

/// Everything about a model except its weights: enough to validate a cascade or an ensemble
/// before loading anything.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// A short name for messages (the run or checkpoint path).
    pub label: String,
    /// The network's configuration.
    pub model: ModelConfig,
    /// The training noise schedule.
    pub schedule: ScheduleConfig,
    /// What the network predicts.
    pub prediction: Prediction,
    /// The run's sampler settings (the defaults for sampling).
    pub sampler: SamplerConfig,
    /// Gaussian or cold diffusion.
    pub process: ProcessConfig,
    /// The run's data section (cold starts and conditioning images come from it); `None` for
    /// diffusers models.
    pub data: Option<DataConfig>,
    /// Shape of one output: `[C, H, W]` for images, `[D]` for vectors.
    pub shape: Vec<i64>,
    /// What the network is conditioned on.
    pub conditioning: ConditioningSpec,
    /// For SR stages: the low-resolution input.
    pub lowres: Option<LowresSpec>,
    /// Where it came from, for `sample.json` (paths; the weights' hash is added on load).
    pub record: serde_json::Value,
    weights: WeightsSource,
}

impl ModelInfo {
    /// A difflab run directory (its latest checkpoint), a checkpoint directory
    /// (`RUN/checkpoints/step-N`) or `RUN/checkpoints/latest`; the config is the run's
    /// `config.yaml`.
    pub fn from_run(path: &Path, weights: WeightsKind) -> Result<Self, SamplingError> {
        let (run, checkpoint) = if path.join("config.yaml").is_file() {
            (path.to_path_buf(), resolve_checkpoint(path)?)
        } else {
            let checkpoint = resolve_checkpoint(path)?;
            let run = checkpoint
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            (run, checkpoint)
        };
        let config_path = RunDir::new(&run).config();
        if !config_path.is_file() {
            return Err(SamplingError::invalid(format!(
                "{}: no config.yaml found for this checkpoint (looked for {})",
                path.display(),
                config_path.display()
            )));
        }
        let config = load_recorded_config(&config_path, &[])?;
        let file = checkpoint.join(weights.file());
        if !file.is_file() {
            return Err(SamplingError::invalid(format!(
                "{}: checkpoint has no {} ({} weights){}",
                checkpoint.display(),
                weights.file(),
                match weights {
                    WeightsKind::Ema => "EMA",
                    WeightsKind::Raw => "raw",
                },
                if weights == WeightsKind::Ema {
                    "; use --raw / weights: raw"
                } else {
                    ""
                }
            )));
        }
        let record = json!({
            "run": run,
            "checkpoint": checkpoint,
            "weights": weights,
        });
        Self::from_config(&config, path.display().to_string(), file, record)
    }

    /// A model described by an experiment config whose weights are in `weights_file`.
    pub fn from_config(
        config: &ExperimentConfig,
        label: String,
        weights_file: PathBuf,
        record: serde_json::Value,
    ) -> Result<Self, SamplingError> {
        let r = config.data.resolution;
        let (shape, conditioning, lowres) = match &config.model {
            ModelConfig::Unet(u) => (vec![u.in_channels, r, r], ConditioningSpec::of(u), None),
            ModelConfig::SrUnet(sr) => {
                let Some(low) = config.data.lowres else {
                    return Err(SamplingError::invalid(format!(
                        "{label}: an sr_unet run without data.lowres"
                    )));
                };
                (
                    vec![sr.unet.in_channels, r, r],
                    ConditioningSpec::of(&sr.unet),
                    Some(LowresSpec {
                        shape: vec![sr.lowres_channels(), low, low],
                        train_max: config.training.lowres_noise.train_max,
                        sample_level: config.training.lowres_noise.sample,
                    }),
                )
            }
            ModelConfig::Mlp(m) => (vec![m.data_dim], ConditioningSpec::default(), None),
        };
        Ok(Self {
            label,
            model: config.model.clone(),
            schedule: config.schedule.clone(),
            prediction: config.objective,
            sampler: config.sampler.clone(),
            process: config.process.clone(),
            data: Some(config.data.clone()),
            shape,
            conditioning,
            lowres,
            record,
            weights: WeightsSource::Difflab(weights_file),
        })
    }

    /// SHA-256 of the weights file (a diffusers folder's `diffusion_pytorch_model.safetensors`).
    pub fn weights_digest(&self) -> Result<String, SamplingError> {
        let file = match &self.weights {
            WeightsSource::Difflab(file) => file.clone(),
            WeightsSource::Diffusers(dir) => dir.join("diffusion_pytorch_model.safetensors"),
        };
        Ok(sha256_file(&file)?)
    }

    /// Load the weights onto `device`.
    pub fn load(&self, device: Device) -> Result<LoadedModel, SamplingError> {
        match &self.weights {
            WeightsSource::Difflab(file) => {
                let mut vs = nn::VarStore::new(device);
                let network = Network::build(&vs.root(), &self.model)?;
                load_weights(&mut vs, file)?;
                let mut info = self.clone();
                info.record["weights_sha256"] = json!(sha256_file(file)?);
                Ok(LoadedModel {
                    info,
                    network,
                    _vs: vs,
                })
            }
            WeightsSource::Diffusers(dir) => {
                let (unet, vs, _) = load_diffusers_unet(dir, device)?;
                Ok(LoadedModel {
                    info: self.clone(),
                    network: Network::Unet(unet),
                    _vs: vs,
                })
            }
        }
    }

    /// The first field in which two models (experts of one ensemble) differ, as
    /// `(field, this, other)`; `None` when they can share a sampling loop.
    pub fn incompatibility(&self, other: &Self) -> Option<(&'static str, String, String)> {
        let pair = |field, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            Some((field, format!("{a:?}"), format!("{b:?}")))
        };
        if self.schedule != other.schedule {
            return pair("schedule", &self.schedule, &other.schedule);
        }
        if self.prediction != other.prediction {
            return pair("objective", &self.prediction, &other.prediction);
        }
        if self.process != other.process {
            return pair("process", &self.process, &other.process);
        }
        if self.shape != other.shape {
            return pair("output shape", &self.shape, &other.shape);
        }
        if self.conditioning != other.conditioning {
            return pair("conditioning", &self.conditioning, &other.conditioning);
        }
        let low = |l: &Option<LowresSpec>| l.as_ref().map(|l| l.shape.clone());
        if low(&self.lowres) != low(&other.lowres) {
            return pair(
                "low-resolution input",
                &low(&self.lowres),
                &low(&other.lowres),
            );
        }
        None
    }
}

/// How to read a diffusers model's training schedule, which its folder does not record.
#[derive(Clone, Debug)]
pub struct DiffusersModelSpec {
    /// The training schedule (diffusers' default: linear 1e-4..0.02 over 1000 steps).
    pub schedule: ScheduleConfig,
    /// What the model predicts.
    pub prediction: Prediction,
    /// Default sampler settings (diffusers' DDIMPipeline: DDIM, leading spacing).
    pub sampler: SamplerConfig,
}

/// Load a diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors).
pub fn load_diffusers_model(
    dir: &Path,
    spec: DiffusersModelSpec,
    device: Device,
) -> Result<LoadedModel, SamplingError> {
    let (unet, vs, config) = load_diffusers_unet(dir, device)?;
    let (h, w) = config.sample_size().ok_or_else(|| {
        SamplingError::invalid(format!("{}: config.json has no sample_size", dir.display()))
    })?;
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let record = json!({
        "diffusers_model": dir,
        "weights_sha256": sha256_file(&weights)?,
        "config_sha256": sha256_file(&dir.join("config.json"))?,
    });
    let info = ModelInfo {
        label: dir.display().to_string(),
        model: ModelConfig::Unet(unet.config().clone()),
        schedule: spec.schedule,
        prediction: spec.prediction,
        sampler: spec.sampler,
        process: ProcessConfig::Gaussian,
        data: None,
        shape: vec![config.in_channels, h, w],
        conditioning: ConditioningSpec::of(unet.config()),
        lowres: None,
        record,
        weights: WeightsSource::Diffusers(dir.to_path_buf()),
    };
    Ok(LoadedModel {
        info,
        network: Network::Unet(unet),
        _vs: vs,
    })
}

/// A model with its weights on a device.
pub struct LoadedModel {
    /// What it is (with `weights_sha256` in its record).
    pub info: ModelInfo,
    /// The network.
    pub network: Network,
    _vs: nn::VarStore,
}
