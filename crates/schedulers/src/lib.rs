//! Noise schedules and everything that depends only on them.
//!
//! - [`ScheduleConfig`] / [`NoiseSchedule`]: beta tables (`linear`, `scaled_linear`, `cosine`,
//!   `sigmoid`), optional zero-terminal-SNR rescale, ᾱ_t and SNR(t).
//! - [`inference_timesteps`]: the timesteps a few-step sampler visits (leading / trailing / linspace);
//!   [`shared_timestep`] / [`is_shared_timestep`]: the one-broadcast-element form of a timestep
//!   the whole batch shares, which samplers pass and networks recognise.
//! - [`ForwardProcess`]: q(x_t | x_0) for a per-sample timestep tensor and the training targets.
//! - [`Prediction`]: what a network outputs (ε, x₀ or v) and conversions between them.
//! - [`posterior`]: the DDPM posterior q(x_{t-1} | x_t, x_0) mean coefficients and variances.
//! - [`degradation`]: cold-diffusion degradation operators D(x₀, t).
//!
//! Tables are computed in f64; the network-facing tensors are f32.
#![forbid(unsafe_code)]

pub mod beta_schedule;
mod coef;
pub mod degradation;
mod error;
pub mod forward;
pub mod posterior;
pub mod prediction;
pub mod schedule;
pub mod timesteps;

pub use beta_schedule::{BetaScheduleKind, ScheduleConfig};
pub use coef::Coef;
pub use degradation::{Degradation, DegradationConfig};
pub use error::ScheduleError;
pub use forward::ForwardProcess;
pub use posterior::VarianceType;
pub use prediction::Prediction;
pub use schedule::{NoiseSchedule, Schedule};
pub use timesteps::{TimestepSpacing, inference_timesteps, is_shared_timestep, shared_timestep};
