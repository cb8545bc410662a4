//! The residual block of the DDPM UNet (Ho et al. 2020, App. B, after Wide ResNet), with the
//! time embedding injected either by addition or by adaptive group normalisation.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use crate::init;
use crate::ops::{self, Conv2d, Modulation};
use crate::params::ParamCount;

/// How a residual block reads the time (and class) embedding `e`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeConditioning {
    /// `h = conv1(…) + W e`, then `GroupNorm(h)` (DDPM; diffusers `default`).
    #[default]
    Add,
    /// AdaGN (Dhariwal & Nichol 2021, §3): `[s, b] = W e`,
    /// `h = GroupNorm(h)·(1 + s) + b` (diffusers `scale_shift`).
    ScaleShift,
}

/// Resolution change inside a residual block (BigGAN, Brock et al. 2019, App. B; the
/// "resnet" up/down blocks of Song et al. 2021, diffusers' `ResnetBlock2D(up=…, down=…)`):
/// after `SiLU(norm1(x))` both the residual branch and the shortcut input are resampled by a
/// parameter-free ×2 operation, so the block's output has half or twice the input's H and W.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resampling {
    /// Same resolution.
    #[default]
    None,
    /// Nearest-neighbour ×2 upsampling.
    Up,
    /// 2×2 average pooling (stride 2).
    Down,
}

impl Resampling {
    /// Apply the parameter-free resampling to `[B, C, H, W]`.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::None => x.shallow_clone(),
            Self::Up => ops::upsample_nearest2x(x),
            Self::Down => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
        }
    }
}

/// Shape and options of one [`ResnetBlock2D`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResnetConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Width of the time embedding `e`.
    pub temb_channels: i64,
    /// GroupNorm groups (both norms).
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout probability before the second convolution (training only).
    pub dropout: f64,
    /// How `e` enters the block.
    pub conditioning: TimeConditioning,
    /// The output is `(shortcut(x) + h) / output_scale_factor`.
    pub output_scale_factor: f64,
    /// Resolution change inside the block ([`Resampling::None`] for an ordinary block).
    pub resampling: Resampling,
}

/// `out = (shortcut(x) + conv2(drop(SiLU(cond(norm2, conv1(SiLU(norm1(x))), W·SiLU(e)))))) / r`,
/// where `shortcut` is a 1×1 convolution when the channel count changes and the identity
/// otherwise. With [`Resampling`] `Up`/`Down`, `x` and `SiLU(norm1(x))` are resampled before
/// `shortcut` and `conv1`. Parameter names follow diffusers' `ResnetBlock2D`: `norm1`, `conv1`,
/// `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: Conv2d,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    config: ResnetConfig,
}

pub(crate) fn group_norm(vs: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    init::group_norm(vs, groups, channels, eps)
}

pub(crate) fn conv3x3(vs: nn::Path, c_in: i64, c_out: i64, stride: i64, padding: i64) -> Conv2d {
    Conv2d::new(vs, c_in, c_out, 3, stride, padding)
}

impl ResnetBlock2D {
    /// Create the block's parameters under `vs`. Channel counts must be divisible by
    /// `config.groups` (checked by the UNet config).
    pub fn new(vs: &nn::Path, config: &ResnetConfig) -> Self {
        let c = config;
        let proj_out = match c.conditioning {
            TimeConditioning::Add => c.out_channels,
            TimeConditioning::ScaleShift => 2 * c.out_channels,
        };
        // Fields in diffusers' construction order: the same draws under the same seed.
        Self {
            norm1: group_norm(vs / "norm1", c.groups, c.in_channels, c.eps),
            conv1: conv3x3(vs / "conv1", c.in_channels, c.out_channels, 1, 1),
            time_emb_proj: init::linear(vs / "time_emb_proj", c.temb_channels, proj_out),
            norm2: group_norm(vs / "norm2", c.groups, c.out_channels, c.eps),
            conv2: conv3x3(vs / "conv2", c.out_channels, c.out_channels, 1, 1),
            conv_shortcut: (c.in_channels != c.out_channels)
                .then(|| Conv2d::new(vs / "conv_shortcut", c.in_channels, c.out_channels, 1, 1, 0)),
            config: *config,
        }
    }

    /// Zero `conv2`, the residual branch's last layer, so the block starts as its shortcut
    /// ([`crate::InitScheme::ZeroOut`]).
    pub fn zero_branch_output(&self) {
        self.conv2.zero();
    }

    /// The block's configuration.
    pub fn config(&self) -> &ResnetConfig {
        &self.config
    }

    /// `x`: `[B, in, H, W]`, `temb`: `[B, temb_channels]` → `[B, out, H, W]`.
    /// With [`Resampling::Up`]/[`Resampling::Down`] the output is `2H × 2W`/`H/2 × W/2`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let c = &self.config;
        let h = ops::group_norm_silu(x, &self.norm1, c.eps, Modulation::default());
        let (h, x) = (c.resampling.apply(&h), c.resampling.apply(x));
        let h = self.conv1.forward(&h);
        let e = ops::linear(&self.time_emb_proj, &ops::silu(temb))
            .unsqueeze(-1)
            .unsqueeze(-1);
        let halves;
        let modulation = match c.conditioning {
            TimeConditioning::Add => Modulation {
                offset: Some(&e),
                ..Modulation::default()
            },
            TimeConditioning::ScaleShift => {
                halves = e.chunk(2, 1);
                Modulation {
                    scale: Some(&halves[0]),
                    shift: Some(&halves[1]),
                    ..Modulation::default()
                }
            }
        };
        let h = ops::group_norm_silu(&h, &self.norm2, c.eps, modulation).dropout(c.dropout, train);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(&x),
            None => x,
        };
        let out = self.conv2.forward_add(&h, &shortcut);
        if c.output_scale_factor == 1.0 {
            out
        } else {
            out / c.output_scale_factor
        }
    }
}

impl ParamCount for ResnetBlock2D {
    fn param_count(&self) -> i64 {
        self.norm1.param_count()
            + self.conv1.param_count()
            + self.time_emb_proj.param_count()
            + self.norm2.param_count()
            + self.conv2.param_count()
            + self.conv_shortcut.param_count()
    }
}
