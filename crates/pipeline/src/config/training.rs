//! The `process:`, `training:` and `logging:` config sections.

use difflab_schedulers::DegradationConfig;
use serde::{Deserialize, Serialize};

use tch::Device;

use super::ModelConfig;
use super::lowres::LowresNoiseConfig;
use super::optim::{EmaConfig, LrConfig, OptimizerConfig};

/// How data is corrupted: Gaussian diffusion, or cold diffusion with a degradation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessConfig {
    /// x_t = √ᾱ x₀ + √(1−ᾱ) ε with the `schedule:` section (Ho et al. 2020).
    #[default]
    Gaussian,
    /// x_t = D(x₀, t) for a degradation D (Bansal et al. 2022); the model predicts x₀.
    Cold {
        /// The degradation operator.
        degradation: DegradationConfig,
    },
}

/// What to do when a loss or gradient norm is NaN/inf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NanPolicy {
    /// Stop with an error naming the step; the last good checkpoint stays on disk.
    #[default]
    Stop,
    /// Skip the batch (no update), count it, and go on.
    Skip,
}

/// The `training:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Optimiser steps to train for (the run's total, also when resuming).
    pub steps: u64,
    /// Examples per optimiser step (split over `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Optimiser and base learning rate.
    pub optimizer: OptimizerConfig,
    /// Warmup and decay of the learning rate.
    pub lr_schedule: LrConfig,
    /// Exponential moving average of the weights (used for previews and sampling).
    pub ema: EmaConfig,
    /// Clip the global gradient L2 norm to this value (0 = no clipping; the norm is logged).
    pub grad_clip: f64,
    /// mse or l1; default mse for Gaussian diffusion, l1 for cold diffusion.
    pub loss: Option<LossKind>,
    /// Min-SNR-γ loss weighting (Hang et al. 2023; γ = 5 is their default); Gaussian only.
    pub min_snr_gamma: Option<f64>,
    /// Offset noise strength: ε += s·n with n ~ N(0, I) per (sample, channel) (Guttenberg 2023).
    pub offset_noise: f64,
    /// Probability of dropping the labels (null class / zero vectors) for classifier-free
    /// guidance (Ho & Salimans 2022 use 0.1–0.2). Class labels need `model.null_class: true`.
    pub label_dropout: f64,
    /// Train only on timesteps in [lo, hi) (one expert of an ensemble); default all of [0, T).
    pub timestep_range: Option<[usize; 2]>,
    /// Write a checkpoint every N steps (one is always written at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Keep the last K checkpoints (directories with a `KEEP` file are never deleted).
    pub keep_last: usize,
    /// Write a preview grid from the EMA weights every N steps (0 = only at the end).
    pub sample_every: u64,
    /// Images in each preview grid.
    pub preview_images: usize,
    /// NaN/inf loss or gradient: stop or skip the batch.
    pub on_nan: NanPolicy,
    /// `auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16`.
    pub precision: Precision,
    /// Layout of the convolutional weights and activations: `auto` (channels-last for UNets,
    /// the default), `contiguous` or `channels_last`. Changes speed, not what is computed.
    pub memory_format: MemoryFormat,
    /// Super-resolution stages: noise-conditioning augmentation of the low-resolution input.
    pub lowres_noise: LowresNoiseConfig,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            optimizer: OptimizerConfig::default(),
            lr_schedule: LrConfig::default(),
            ema: EmaConfig::default(),
            grad_clip: 1.0,
            loss: None,
            min_snr_gamma: None,
            offset_noise: 0.0,
            label_dropout: 0.0,
            timestep_range: None,
            checkpoint_every: 500,
            keep_last: 3,
            sample_every: 500,
            preview_images: 16,
            on_nan: NanPolicy::Stop,
            precision: Precision::Auto,
            memory_format: MemoryFormat::Auto,
            lowres_noise: LowresNoiseConfig::default(),
        }
    }
}

/// The largest batch a config may ask for (memory is checked against the model too).
pub const MAX_BATCH: usize = 1 << 20;

/// The most images a preview grid may have.
pub const MAX_PREVIEW: usize = 1024;

impl TrainingConfig {
    /// Range checks, naming the key and value.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(format!("invalid training.{key} = {value}: {why}"))
        };
        if self.steps == 0 {
            return bad("steps", &self.steps, "must be >= 1");
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return bad(
                "batch_size",
                &self.batch_size,
                &format!("must be in 1..={MAX_BATCH}"),
            );
        }
        if self.preview_images > MAX_PREVIEW {
            return bad(
                "preview_images",
                &self.preview_images,
                &format!("must be at most {MAX_PREVIEW} (one grid)"),
            );
        }
        if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
            return bad(
                "grad_accum",
                &self.grad_accum,
                "must be >= 1 and divide batch_size",
            );
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            return bad("grad_clip", &self.grad_clip, "must be >= 0 (0 = off)");
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad("label_dropout", &self.label_dropout, "must be in [0, 1)");
        }
        if !(self.offset_noise >= 0.0 && self.offset_noise.is_finite()) {
            return bad("offset_noise", &self.offset_noise, "must be >= 0");
        }
        if let Some(g) = self.min_snr_gamma
            && !(g > 0.0 && g.is_finite())
        {
            return bad("min_snr_gamma", &g, "must be > 0");
        }
        if let Some([lo, hi]) = self.timestep_range
            && lo >= hi
        {
            return bad("timestep_range", &format!("[{lo}, {hi})"), "needs lo < hi");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", &0, "must be >= 1");
        }
        if self.keep_last == 0 {
            return bad("keep_last", &0, "must be >= 1");
        }
        self.lowres_noise.validate()
    }
}

/// The `logging:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Log scalars (and print a plain progress line when not on a terminal) every N steps.
    pub log_every: u64,
    /// Write TensorBoard event files under the run directory's `tensorboard/`.
    pub tensorboard: bool,
    /// Evaluate the checkpoint every N steps with `difflab eval` (the run's sampler,
    /// `eval_samples` samples) and log the metrics as `eval/<name>`; 0 = never. Must be a
    /// multiple of `training.checkpoint_every`.
    pub eval_every: u64,
    /// Samples per in-training evaluation.
    pub eval_samples: usize,
}

impl LoggingConfig {
    /// Range checks, naming the key and value.
    pub fn validate(&self) -> Result<(), String> {
        if self.log_every == 0 {
            return Err("invalid logging.log_every = 0: must be >= 1".into());
        }
        if self.eval_every > 0 && self.eval_samples < 2 {
            return Err(format!(
                "invalid logging.eval_samples = {}: metrics need at least 2 samples",
                self.eval_samples
            ));
        }
        Ok(())
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            log_every: 10,
            tensorboard: true,
            eval_every: 0,
            eval_samples: 256,
        }
    }
}

/// Elementwise loss between prediction and target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean squared error (Ho et al. 2020, the "simple" loss).
    Mse,
    /// Mean absolute error (Bansal et al. 2022 use it for cold diffusion).
    L1,
}

/// `training.memory_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// Channels-last for convolutional networks (UNet, SR-UNet), the standard layout for the
    /// MLP (which has no image tensors).
    #[default]
    Auto,
    /// The standard contiguous NCHW layout.
    Contiguous,
    /// Channels-last for every 4-D weight and activation.
    ChannelsLast,
}

impl MemoryFormat {
    /// Whether a network of `model`'s kind trains channels-last.
    pub fn channels_last_for(self, model: &ModelConfig) -> bool {
        match self {
            Self::Auto => !matches!(model, ModelConfig::Mlp(_)),
            Self::Contiguous => false,
            Self::ChannelsLast => true,
        }
    }
}

/// Numeric precision of the forward pass in training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA, full fp32 on the CPU.
    #[default]
    Auto,
    /// Full fp32 everywhere.
    Fp32,
    /// bf16 autocast on any device (on a CPU without bf16 units this is slower than fp32).
    Bf16,
}

impl Precision {
    /// Whether the forward pass on `device` runs under bf16 autocast.
    pub fn uses_bf16(self, device: Device) -> bool {
        match self {
            Self::Auto => device.is_cuda(),
            Self::Fp32 => false,
            Self::Bf16 => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_channels_last_for_conv_nets_only() {
        let unet = ModelConfig::Unet(Default::default());
        let mlp = ModelConfig::Mlp(Default::default());
        assert!(MemoryFormat::Auto.channels_last_for(&unet));
        assert!(!MemoryFormat::Auto.channels_last_for(&mlp));
        assert!(!MemoryFormat::Contiguous.channels_last_for(&unet));
        assert!(MemoryFormat::ChannelsLast.channels_last_for(&mlp));
    }

    #[test]
    fn auto_means_bf16_on_cuda_only() {
        assert!(Precision::Auto.uses_bf16(Device::Cuda(0)));
        assert!(!Precision::Auto.uses_bf16(Device::Cpu));
        assert!(Precision::Bf16.uses_bf16(Device::Cpu));
        assert!(!Precision::Fp32.uses_bf16(Device::Cuda(0)));
    }
}
