//! The super-resolution UNet of a cascade (Ho et al. 2022, "Cascaded Diffusion Models for High
//! Fidelity Image Generation"; Saharia et al. 2022, "Imagen", §2.5).
//!
//! The network denoises a high-resolution `x_t` (`[B, C, H, W]`) given the low-resolution image
//! (`[B, C', h, w]`, `H = s·h`, `W = s·w` for an integer factor `s`): the low-resolution image is
//! upsampled to `H×W` (bilinear or bicubic) and concatenated to `x_t` as conditioning channels,
//! and its noise-augmentation level is embedded (sinusoid + MLP) and added to the time
//! embedding, so one model serves every augmentation level (random in training, fixed at
//! sampling). It is a thin wrapper over [`UNet`]: the wrapped config gets
//! `cond_channels += C'` and `lowres_noise_level` set, and the parameter names are the UNet's.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use crate::unet::{ModelSummary, NoiseLevelEmbeddingConfig, UNetConfig, UNetInputs};
use crate::{ModelError, UNet};

/// How the low-resolution image is brought to the output resolution (both with
/// `align_corners = false`, i.e. pixel centres aligned as in PIL / `torch.nn.functional.
/// interpolate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowresUpsample {
    /// Bilinear interpolation.
    #[default]
    Bilinear,
    /// Bicubic interpolation (Keys 1981, a = −0.75); may overshoot the input range.
    Bicubic,
}

/// Configuration of an [`SrUNet`], mirroring the `model:` section of an SR stage's YAML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrUNetConfig {
    /// The denoising UNet. `in_channels`/`out_channels` are the high-resolution image's;
    /// `cond_channels` counts only extra conditioning beyond the low-resolution image (usually
    /// 0); `lowres_noise_level` must be unset (use `noise_level` below).
    pub unet: UNetConfig,
    /// Channels of the low-resolution image; default: `unet.in_channels`.
    pub lowres_channels: Option<i64>,
    /// Interpolation of the low-resolution image to the output size.
    pub upsample: LowresUpsample,
    /// Required ratio `H / h` (= `W / w`), e.g. 2 for 128 → 256; `None` (default): any integer
    /// ratio, the same in both directions.
    pub scale_factor: Option<i64>,
    /// Embedding of the low-resolution noise-augmentation level.
    pub noise_level: NoiseLevelEmbeddingConfig,
}

impl Default for SrUNetConfig {
    fn default() -> Self {
        Self {
            unet: UNetConfig::default(),
            lowres_channels: None,
            upsample: LowresUpsample::Bilinear,
            scale_factor: None,
            noise_level: NoiseLevelEmbeddingConfig::default(),
        }
    }
}

/// Prefix the key of an `InvalidConfig` error with `unet.`.
fn in_unet(e: ModelError) -> ModelError {
    match e {
        ModelError::InvalidConfig { key, value, reason } => ModelError::InvalidConfig {
            key: format!("unet.{key}"),
            value,
            reason,
        },
        other => other,
    }
}

impl SrUNetConfig {
    /// Channels of the low-resolution image.
    pub fn lowres_channels(&self) -> i64 {
        self.lowres_channels.unwrap_or(self.unet.in_channels)
    }

    /// Check every value; the error names the key (`unet.…` for the wrapped UNet's) and value.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.unet.validate().map_err(in_unet)?;
        if self.unet.lowres_noise_level.is_some() {
            return Err(ModelError::invalid(
                "unet.lowres_noise_level",
                "set",
                "the SR-UNet embeds the noise level itself: configure `noise_level` instead",
            ));
        }
        if let Some(c) = self.lowres_channels
            && c < 1
        {
            return Err(ModelError::invalid("lowres_channels", c, "must be >= 1"));
        }
        if let Some(s) = self.scale_factor
            && s < 1
        {
            return Err(ModelError::invalid(
                "scale_factor",
                s,
                "must be an integer >= 1",
            ));
        }
        self.unet_config().validate().map_err(|e| match e {
            ModelError::InvalidConfig { key, value, reason } if key.starts_with("lowres_noise") => {
                ModelError::InvalidConfig {
                    key: key.replacen("lowres_noise_level", "noise_level", 1),
                    value,
                    reason,
                }
            }
            other => in_unet(other),
        })
    }

    /// The configuration of the wrapped [`UNet`]: `unet` with the low-resolution channels added
    /// to `cond_channels` (first, before any extra conditioning image) and the noise-level
    /// embedding enabled.
    pub fn unet_config(&self) -> UNetConfig {
        UNetConfig {
            cond_channels: self.unet.cond_channels + self.lowres_channels(),
            lowres_noise_level: Some(self.noise_level),
            ..self.unet.clone()
        }
    }
}

/// A super-resolution UNet `f(x_t, t, up(lowres), s)`; see the [module docs](self).
#[derive(Debug)]
pub struct SrUNet {
    config: SrUNetConfig,
    unet: UNet,
}

impl SrUNet {
    /// Validate `config` and create the parameters under `vs` (the wrapped UNet's names).
    pub fn new(vs: &nn::Path, config: &SrUNetConfig) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self {
            unet: UNet::new(vs, &config.unet_config())?,
            config: config.clone(),
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &SrUNetConfig {
        &self.config
    }

    /// The wrapped UNet (its config has the conditioning channels and noise level enabled).
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> i64 {
        self.unet.num_parameters()
    }

    /// Check `lowres` (`[B, lowres_channels, h, w]`, floating) against `x`
    /// (`[B, C, H, W]`): `H / h = W / w` must be an integer (equal to `scale_factor` when set).
    /// Returns the factor.
    pub fn check_lowres(&self, x: &Tensor, lowres: &Tensor) -> Result<i64, ModelError> {
        let bad = |reason: String| ModelError::InvalidInput {
            what: "lowres",
            reason,
        };
        let xs = x.size();
        if xs.len() != 4 {
            return Err(ModelError::InvalidInput {
                what: "x",
                reason: format!("expected [B, C, H, W], got shape {xs:?}"),
            });
        }
        let ls = lowres.size();
        let c = self.config.lowres_channels();
        if ls.len() != 4 || ls[0] != xs[0] || ls[1] != c || !lowres.is_floating_point() {
            return Err(bad(format!(
                "expected a floating [B, {c}, h, w] tensor with B = {} (x is {xs:?}), got {:?} {ls:?}",
                xs[0],
                lowres.kind()
            )));
        }
        let (h, w) = (ls[2], ls[3]);
        if h < 1 || w < 1 || xs[2] % h != 0 || xs[3] % w != 0 || xs[2] / h != xs[3] / w {
            return Err(bad(format!(
                "size {h}×{w} does not divide x's {}×{} by one integer factor",
                xs[2], xs[3]
            )));
        }
        let factor = xs[2] / h;
        if let Some(s) = self.config.scale_factor
            && s != factor
        {
            return Err(bad(format!(
                "size {h}×{w} is x's {}×{} divided by {factor}, the model expects scale_factor {s} ({}×{})",
                xs[2],
                xs[3],
                xs[2] / s,
                xs[3] / s
            )));
        }
        Ok(factor)
    }

    /// `lowres` (`[B, C', h, w]`) interpolated to `height × width` with the configured mode.
    pub fn upsample(&self, lowres: &Tensor, height: i64, width: i64) -> Tensor {
        match self.config.upsample {
            LowresUpsample::Bilinear => {
                lowres.upsample_bilinear2d([height, width], false, None, None)
            }
            LowresUpsample::Bicubic => {
                lowres.upsample_bicubic2d([height, width], false, None, None)
            }
        }
    }

    /// The prediction for high-resolution `x` (`[B, C, H, W]`) at timesteps `t` given the
    /// low-resolution image `lowres` (`[B, C', h, w]`) and `inputs`: its noise-augmentation
    /// level `inputs.lowres_noise_level` (required: `[B]`, `[1]` or scalar; int64 `>= 0` or
    /// float in `[0, 1]`; [`UNetInputs::noise_level`] gives inputs with only that), the extra
    /// conditioning image `inputs.cond_image` (when `unet.cond_channels > 0`), appended after
    /// the upsampled low-resolution image, and the other routes as in [`UNetInputs`].
    ///
    /// # Panics
    /// On invalid inputs, with the message of [`SrUNet::try_forward`]'s error.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        lowres: &Tensor,
        inputs: &UNetInputs<'_>,
        train: bool,
    ) -> Tensor {
        self.try_forward(x, t, lowres, inputs, train)
            .unwrap_or_else(|e| panic!("SrUNet::forward: {e}"))
    }

    /// [`SrUNet::forward`] returning an error that names the bad input (`x`, `t`, `lowres`,
    /// `lowres_noise_level`, `cond_image`, …) instead of panicking.
    pub fn try_forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        lowres: &Tensor,
        inputs: &UNetInputs<'_>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        self.check_lowres(x, lowres)?;
        let size = x.size();
        let up = self.upsample(
            &lowres.to_device(x.device()).to_kind(x.kind()),
            size[2],
            size[3],
        );
        let cond = match inputs.cond_image {
            None if self.config.unet.cond_channels == 0 => up,
            None => {
                return Err(ModelError::InvalidInput {
                    what: "cond_image",
                    reason: format!(
                        "required: the model has unet.cond_channels = {}",
                        self.config.unet.cond_channels
                    ),
                });
            }
            Some(extra) => {
                let expected = [size[0], self.config.unet.cond_channels, size[2], size[3]];
                if self.config.unet.cond_channels == 0 || extra.size() != expected {
                    return Err(ModelError::InvalidInput {
                        what: "cond_image",
                        reason: format!(
                            "expected {expected:?} (unet.cond_channels extra channels), got {:?}",
                            extra.size()
                        ),
                    });
                }
                Tensor::cat(&[up, extra.to_device(x.device()).to_kind(x.kind())], 1)
            }
        };
        let inputs = UNetInputs {
            cond_image: Some(&cond),
            ..*inputs
        };
        self.unet.try_forward(x, t, &inputs, train)
    }

    /// The wrapped UNet's per-block summary for a `height × width` output.
    pub fn summary(&self, height: i64, width: i64) -> Result<ModelSummary, ModelError> {
        self.unet.summary(height, width)
    }
}
