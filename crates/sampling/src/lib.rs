//! Sampling from trained models: loading a run, checkpoint, diffusers folder or expert
//! ensemble ([`ModelInfo`], [`StageModel`]), resolving settings ([`StageSettings`]) and
//! running batches with reproducible noise ([`sample_stage`]). The `difflab sample` command
//! and cascades are thin layers over this.
#![forbid(unsafe_code)]

pub mod cascade;
mod network_denoiser;

mod ensemble;
mod error;
mod inputs;
mod job;
pub(crate) mod manifest_file;
mod model;
mod noise;
pub mod output_folder;
mod request;
mod trajectory;

pub use ensemble::{EnsembleManifest, EnsembleSpec, ExpertEntry, StageModel};
pub use error::SamplingError;
pub use inputs::load_input_images;
pub use job::{
    ClassChoice, JobObserver, JobOptions, StageOutput, StageSettings, sample_stage, sample_with,
};
pub use model::{
    ConditioningSpec, DiffusersModelSpec, LoadedModel, LowresSpec, ModelInfo, WeightsKind,
    load_diffusers_model,
};
pub use network_denoiser::NetworkDenoiser;
pub(crate) use noise::JobNoise;
pub use noise::NoiseMode;
pub use output_folder::OutputMode;
pub use request::{
    OnSampleStep, SampleRequest, SampleSource, SampleSummary, class_dir, sample_classes,
    sample_to_folder,
};
pub use trajectory::Trajectory;
