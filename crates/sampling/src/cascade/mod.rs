//! Cascaded generation (Ho et al. 2022, "Cascaded Diffusion Models"): a base stage samples at
//! low resolution and super-resolution stages each upsample the previous stage's output.
//!
//! [`lowres`] holds what SR stages share between training and sampling (area downsampling and
//! noise-conditioning augmentation); [`manifest`] the YAML that names the stages; [`run`]
//! drives them in order.

pub mod lowres;
pub mod manifest;
pub mod run;

pub use difflab_pipeline::config::LowresNoiseConfig;
pub use lowres::{area_downsample, augment_at_level, augment_lowres, augmentation_alpha_bar};
pub use manifest::{
    CascadeManifest, CliStageSettings, PlannedStage, StageEntry, StageSpec, check_chain,
};
pub use run::{CascadeObserver, StageWeights, run_cascade};
