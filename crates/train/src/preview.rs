//! Preview samples during training: the EMA network sampled by the code `difflab sample` runs
//! ([`difflab_sampling::sample_with`]), from the same noise at every preview so grids are
//! comparable across steps.

use std::path::PathBuf;

use difflab_data::Dataset;
use difflab_data::images::{grid_columns, save_grid};
use difflab_pipeline::checkpoint::RunDir;
use difflab_pipeline::config::ProcessConfig;
use difflab_pipeline::{ExperimentConfig, ModelConfig};
use difflab_samplers::SampleError;
use difflab_sampling::cascade::area_downsample;
use difflab_sampling::{
    ClassChoice, JobOptions, ModelInfo, NetworkDenoiser, NoiseMode, SamplingError, StageSettings,
    sample_with,
};
use serde_json::json;
use tch::{Device, Tensor};

use super::{Learner, TrainError, mix};

/// What [`write_preview`] wrote.
pub(crate) enum Preview {
    /// A PNG grid (images) at this path.
    Grid(PathBuf),
    /// A CSV of points (the 2-D toy).
    Points,
    /// Nothing: the model produced NaN/inf (the run goes on; its checkpoint is written).
    Skipped(String),
}

/// Sample `training.preview_images` images from the EMA network with the run's sampler and
/// save them as `samples/step-<N>.png` (a grid), or `samples/step-<N>.csv` for vector data.
/// Class-conditional models cycle through their classes; SR stages, image-conditioned and
/// cold-diffusion models take the first images of the training data as their input, and
/// label-vector models the first example's labels.
pub(crate) fn write_preview(
    learner: &Learner,
    config: &ExperimentConfig,
    dataset: &dyn Dataset,
    step: u64,
    run: &RunDir,
    device: Device,
) -> Result<Preview, TrainError> {
    let n = config.training.preview_images.max(1);
    let label = format!("{} (preview)", config.name);
    let info =
        ModelInfo::from_config(config, label, run.config(), json!({"preview_of": run.root}))?;
    let unet = match &config.model {
        ModelConfig::Unet(u) => Some(u),
        ModelConfig::SrUnet(sr) => Some(&sr.unet),
        ModelConfig::Mlp(_) => None,
    };
    let labels = match unet.and_then(|u| u.label_dim) {
        Some(_) => dataset.get(0)?.labels,
        None => None,
    };
    // The data is read only by the models that take an input image.
    let cold = matches!(config.process, ProcessConfig::Cold { .. });
    let input = match (&config.model, config.data.lowres) {
        (ModelConfig::SrUnet(_), Some(r)) => {
            Some(area_downsample(&first_examples(dataset, n)?.0, r))
        }
        _ if unet.is_some_and(|u| u.cond_channels > 0) => first_examples(dataset, n)?.1,
        _ if cold => Some(first_examples(dataset, n)?.0),
        _ => None,
    };
    let settings = StageSettings {
        sampler: config.sampler.clone(),
        guidance: 1.0,
        class: ClassChoice::Cycle,
        labels,
        noise_level: None,
    };
    let options = JobOptions::new(n, n, mix(config.seed, 0x5EED), NoiseMode::TorchGlobal);
    let denoiser = Box::new(NetworkDenoiser::new(
        learner.ema_network(),
        config.objective,
    ));
    let output = match sample_with(
        &info,
        denoiser,
        &settings,
        input.as_ref(),
        &options,
        device,
        &mut (),
    ) {
        Ok(output) => output,
        Err(SamplingError::Sample(e @ SampleError::NonFinite { .. })) => {
            return Ok(Preview::Skipped(e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let samples = output.samples;
    if samples.dim() == 2 {
        let path = run.samples().join(format!("step-{step:06}.csv"));
        let rows = Vec::<Vec<f32>>::try_from(samples).unwrap_or_default();
        let text: String = rows
            .iter()
            .map(|r| r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        std::fs::write(&path, text).map_err(|error| TrainError::Io {
            path: path.clone(),
            error,
        })?;
        return Ok(Preview::Points);
    }
    let path = run.samples().join(format!("step-{step:06}.png"));
    save_grid(&samples, grid_columns(n), &path).map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(Preview::Grid(path))
}

/// The first `n` examples of the data (repeating when it has fewer) as `([n, …shape],
/// conditioning images [n, …] if the data has them)`.
fn first_examples(dataset: &dyn Dataset, n: usize) -> Result<(Tensor, Option<Tensor>), TrainError> {
    let examples = (0..n)
        .map(|i| dataset.get(i % dataset.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let shape = dataset.shape();
    let stack = |rows: Vec<Tensor>| Tensor::stack(&rows, 0);
    let data = stack(
        examples
            .iter()
            .map(|e| Tensor::from_slice(&e.data).reshape(&shape[..]))
            .collect(),
    );
    let cond = dataset.cond_shape().map(|cs| {
        stack(
            examples
                .iter()
                .map(|e| Tensor::from_slice(e.cond.as_deref().unwrap_or(&[])).reshape(&cs[..]))
                .collect(),
        )
    });
    Ok((data, cond))
}
