//! Running planned stages in order, each SR stage fed the previous stage's output.

use std::ops::Range;

use difflab_samplers::StepInfo;
use tch::{Device, Tensor};

use super::manifest::{CliStageSettings, PlannedStage, StageSpec};
use crate::{
    JobObserver, JobOptions, SamplingError, StageModel, StageOutput, StageSettings, sample_stage,
};

/// A stage's model, loaded now or when the stage runs.
// A handful per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StageWeights {
    /// Already on the device (e.g. a diffusers model loaded by the caller).
    Loaded(StageModel),
    /// Load when the stage runs.
    Deferred,
}

/// What a cascade tells its caller as it runs, stage by stage (see [`JobObserver`]).
pub trait CascadeObserver {
    /// Step `info` of batch `batch` (of `batches`) of stage `stage` was taken.
    fn step(&mut self, stage: &str, batch: usize, batches: usize, info: &StepInfo<'_>) {
        let _ = (stage, batch, batches, info);
    }
    /// Stage `stage` (its index) finished images `range`: `samples`, on the CPU.
    fn batch_done(
        &mut self,
        stage: usize,
        range: Range<usize>,
        samples: &Tensor,
    ) -> Result<(), SamplingError> {
        let _ = (stage, range, samples);
        Ok(())
    }
    /// Stage `stage` (its index) finished.
    fn stage_done(&mut self, stage: usize, output: &StageOutput) -> Result<(), SamplingError> {
        let _ = (stage, output);
        Ok(())
    }
}

/// One stage's job as the cascade's observer sees it.
struct StageObserver<'a> {
    index: usize,
    name: &'a str,
    cascade: &'a mut dyn CascadeObserver,
}

impl JobObserver for StageObserver<'_> {
    fn step(&mut self, batch: usize, batches: usize, info: &StepInfo<'_>) {
        self.cascade.step(self.name, batch, batches, info);
    }
    fn batch_done(&mut self, range: Range<usize>, samples: &Tensor) -> Result<(), SamplingError> {
        self.cascade.batch_done(self.index, range, samples)
    }
}

/// Run `stages` in order. The first stage gets `input` (images from `--cond-image`, if any);
/// each later stage gets the previous stage's samples. With `offload`, a stage's weights are
/// loaded just before it runs and freed after, so only one stage is on the device at a time;
/// otherwise every stage is loaded first (all errors surface before sampling starts).
/// `observer` follows the steps and gets each batch and each stage as it finishes (to save
/// them). With `options.first_image = k` (a resumed job), every stage makes images `k..N`.
#[allow(clippy::too_many_arguments)]
pub fn run_cascade(
    stages: &[PlannedStage],
    preloaded: Vec<StageWeights>,
    cli: &CliStageSettings,
    input: Option<Tensor>,
    options: &JobOptions,
    offload: bool,
    device: Device,
    observer: &mut dyn CascadeObserver,
) -> Result<Vec<StageOutput>, SamplingError> {
    // Every stage's settings first, so a flag that does not fit a stage fails before anything
    // is loaded.
    let settings: Vec<StageSettings> = stages
        .iter()
        .map(|s| s.settings(cli))
        .collect::<Result<_, _>>()?;
    let load = |stage: &PlannedStage| -> Result<StageModel, SamplingError> {
        match &stage.spec {
            StageSpec::Single(info) => Ok(StageModel::Single(info.load(device)?)),
            StageSpec::Ensemble(spec) => StageModel::load_ensemble(spec, device),
        }
    };
    let mut weights: Vec<StageWeights> = preloaded;
    weights.resize_with(stages.len(), || StageWeights::Deferred);
    if !offload {
        for (w, stage) in weights.iter_mut().zip(stages) {
            if matches!(w, StageWeights::Deferred) {
                *w = StageWeights::Loaded(load(stage)?);
            }
        }
    }
    let mut outputs: Vec<StageOutput> = Vec::with_capacity(stages.len());
    let mut next_input = input;
    for (i, ((stage, w), settings)) in stages
        .iter()
        .zip(weights.iter_mut())
        .zip(&settings)
        .enumerate()
    {
        let model = match std::mem::replace(w, StageWeights::Deferred) {
            StageWeights::Loaded(m) => m,
            StageWeights::Deferred => load(stage)?,
        };
        // A previous stage's output starts at the job's first image; input images at image 0.
        let stage_options = JobOptions {
            input_first: if i == 0 { 0 } else { options.first_image },
            ..options.clone()
        };
        let mut job = StageObserver {
            index: i,
            name: &stage.name,
            cascade: &mut *observer,
        };
        let output = sample_stage(
            &model,
            settings,
            next_input.as_ref(),
            &stage_options,
            device,
            &mut job,
        )
        .map_err(|e| SamplingError::invalid(format!("stage {}: {e}", stage.name)))?;
        drop(model);
        observer.stage_done(i, &output)?;
        next_input = Some(output.samples.shallow_clone());
        outputs.push(output);
    }
    Ok(outputs)
}
