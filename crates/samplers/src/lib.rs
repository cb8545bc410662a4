//! Samplers over a [`Denoiser`]: DDPM, DDIM and Cold Diffusion (Algorithms 1 and 2), plus
//! classifier-free guidance as a denoiser combinator.
//!
//! A sampler never knows which network is behind the [`Denoiser`]; it only knows the schedule
//! (through ᾱ values it copies at construction) and what the denoiser predicts. Each sampler is
//! one file whose loop body is the paper's update, with single-step functions (`ddim_step`,
//! `ddpm_step`, `cold_step`) exposed for tests and for users who drive the loop themselves.
#![forbid(unsafe_code)]

mod cold;
mod conditioning;
mod config;
mod ddim;
mod ddpm;
mod denoiser;
mod error;
mod guidance;
mod keys;
mod noise;
mod sampler;
mod x0_processing;

pub use cold::{ColdAlgorithm, ColdSampler, cold_levels, cold_step};
pub use conditioning::Conditioning;
pub use config::{ColdConfig, DdimConfig, DdpmConfig, SamplerConfig, SamplerKind, X0Config};
pub use ddim::{DdimSampler, ddim_step};
pub use ddpm::{DdpmSampler, ddpm_step};
pub use denoiser::{Denoiser, FnDenoiser};
pub use difflab_schedulers::{is_shared_timestep, shared_timestep};
pub use error::SampleError;
pub use guidance::ClassifierFreeGuidance;
pub use keys::{InapplicableKey, SamplerKeys};
pub use noise::{
    GeneratorLock, GlobalSeedNoise, NoiseSource, PerImageNoise, generator_lock, splitmix,
    splitmix_63,
};
pub use sampler::{Sampler, StepInfo, StepOutput};
pub use x0_processing::X0Processing;
