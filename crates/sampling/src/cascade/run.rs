//! Running planned stages in order, each SR stage fed the previous stage's output.

use tch::{Device, Tensor};

use super::manifest::{CliStageSettings, PlannedStage, StageSpec};
use crate::{
    JobOptions, OnStep, SamplingError, StageModel, StageOutput, StageSettings, sample_stage,
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

/// Run `stages` in order. The first stage gets `input` (images from `--cond-image`, if any);
/// each later stage gets the previous stage's samples. With `offload`, a stage's weights are
/// loaded just before it runs and freed after, so only one stage is on the device at a time;
/// otherwise every stage is loaded first (all errors surface before sampling starts).
/// `on_stage_done(index, output)` is called after each stage (to save its images).
#[allow(clippy::too_many_arguments)]
pub fn run_cascade(
    stages: &[PlannedStage],
    preloaded: Vec<StageWeights>,
    cli: &CliStageSettings,
    input: Option<Tensor>,
    options: &JobOptions,
    offload: bool,
    device: Device,
    on_step: &mut dyn FnMut(&str, usize, usize, &difflab_samplers::StepInfo<'_>),
    on_stage_done: &mut dyn FnMut(usize, &StageOutput) -> Result<(), SamplingError>,
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
        let name = stage.name.clone();
        let step: &mut OnStep<'_> = &mut |b, n, s| on_step(&name, b, n, s);
        let output = sample_stage(&model, settings, next_input.as_ref(), options, device, step)
            .map_err(|e| SamplingError::invalid(format!("stage {}: {e}", stage.name)))?;
        drop(model);
        on_stage_done(i, &output)?;
        next_input = Some(output.samples.shallow_clone());
        outputs.push(output);
    }
    Ok(outputs)
}
