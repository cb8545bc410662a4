//! The UNet's stages: encoder level, middle block, decoder level, and the resampling layers.
//! Parameter names follow diffusers' `DownBlock2D`/`AttnDownBlock2D`, `UNetMidBlock2D` and
//! `UpBlock2D`/`AttnUpBlock2D` (`resnets.i`, `attentions.i`, `downsamplers.0.conv`,
//! `upsamplers.0.conv`). With [`Resample::Resnet`] the resampling layers are residual blocks
//! (diffusers' `ResnetDownsampleBlock2D`/`ResnetUpsampleBlock2D`: `downsamplers.0.norm1`, …).

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn, nn::Module};

use crate::attention::{AttentionConfig, SpatialAttention};
use crate::ops::{self, Conv2d};
use crate::params::ParamCount;
use crate::resnet::{Resampling, ResnetBlock2D, ResnetConfig, conv3x3};
use crate::{AttentionKind, ModelError};

/// How the UNet changes resolution between levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Stride-2 3×3 convolution down, nearest ×2 then 3×3 convolution up (DDPM, Ho et al.
    /// 2020; diffusers `conv`).
    #[default]
    Conv,
    /// A residual block that resamples inside (BigGAN, Brock et al. 2019; used by Song et al.
    /// 2021 and Dhariwal & Nichol 2021 as `resblock_updown`; diffusers `resnet`): average
    /// pooling down, nearest ×2 up, both conditioned on the time embedding like any resnet.
    Resnet,
}

/// Stride-2 3×3 convolution halving H and W. With `padding = 0` the input is first padded by
/// one on the right and bottom only (diffusers' `Downsample2D` convention).
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
    padding: i64,
}

impl Downsample {
    /// `channels` → `channels`, parameters under `vs` (`conv.*`).
    pub fn new(vs: &nn::Path, channels: i64, padding: i64) -> Self {
        Self {
            conv: conv3x3(vs / "conv", channels, channels, 2, padding),
            padding,
        }
    }

    /// `[B, C, H, W]` → `[B, C, H/2, W/2]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.padding == 0 {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour ×2 upsampling followed by a 3×3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// `channels` → `channels`, parameters under `vs` (`conv.*`).
    pub fn new(vs: &nn::Path, channels: i64) -> Self {
        Self {
            conv: conv3x3(vs / "conv", channels, channels, 1, 1),
        }
    }

    /// `[B, C, H, W]` → `[B, C, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&ops::upsample_nearest2x(x))
    }
}

/// The layer that halves the resolution at the end of an encoder level.
#[derive(Debug)]
pub enum Downsampler {
    /// [`Resample::Conv`].
    Conv(Box<Downsample>),
    /// [`Resample::Resnet`]: a [`ResnetBlock2D`] with [`Resampling::Down`].
    Resnet(Box<ResnetBlock2D>),
}

impl Downsampler {
    /// `[B, C, H, W]` → `[B, C, H/2, W/2]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        match self {
            Self::Conv(down) => down.forward(x),
            Self::Resnet(block) => block.forward(x, temb, train),
        }
    }
}

impl ParamCount for Downsampler {
    fn param_count(&self) -> i64 {
        match self {
            Self::Conv(down) => down.conv.param_count(),
            Self::Resnet(block) => block.param_count(),
        }
    }
}

impl Downsampler {
    fn zero_branch_output(&self) {
        if let Self::Resnet(block) = self {
            block.zero_branch_output();
        }
    }
}

/// Zero the last layer of every residual branch of a block's resnets and attentions.
fn zero_branch_outputs(resnets: &[ResnetBlock2D], attentions: &[SpatialAttention]) {
    resnets.iter().for_each(ResnetBlock2D::zero_branch_output);
    attentions.iter().for_each(SpatialAttention::zero_output);
}

/// The layer that doubles the resolution at the end of a decoder level.
#[derive(Debug)]
pub enum Upsampler {
    /// [`Resample::Conv`].
    Conv(Box<Upsample>),
    /// [`Resample::Resnet`]: a [`ResnetBlock2D`] with [`Resampling::Up`].
    Resnet(Box<ResnetBlock2D>),
}

impl Upsampler {
    /// `[B, C, H, W]` → `[B, C, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        match self {
            Self::Conv(up) => up.forward(x),
            Self::Resnet(block) => block.forward(x, temb, train),
        }
    }
}

impl ParamCount for Upsampler {
    fn param_count(&self) -> i64 {
        match self {
            Self::Conv(up) => up.conv.param_count(),
            Self::Resnet(block) => block.param_count(),
        }
    }
}

/// What every block of one UNet shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockCommon {
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
    pub dropout: f64,
    pub conditioning: crate::TimeConditioning,
    pub head_dim: Option<i64>,
    pub resample: Resample,
}

impl BlockCommon {
    fn resnet(&self, in_channels: i64, out_channels: i64, scale: f64) -> ResnetConfig {
        self.resampling_resnet(in_channels, out_channels, scale, Resampling::None)
    }

    fn resampling_resnet(
        &self,
        in_channels: i64,
        out_channels: i64,
        scale: f64,
        resampling: Resampling,
    ) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: self.temb_channels,
            groups: self.groups,
            eps: self.eps,
            dropout: self.dropout,
            conditioning: self.conditioning,
            output_scale_factor: scale,
            resampling,
        }
    }

    fn attention(
        &self,
        channels: i64,
        kind: AttentionKind,
        norm_groups: Option<i64>,
        scale: f64,
    ) -> AttentionConfig {
        AttentionConfig {
            channels,
            head_dim: self.head_dim.unwrap_or(channels),
            norm_groups,
            eps: self.eps,
            rescale_output_factor: scale,
            kind,
        }
    }
}

/// `resnets.i` followed by `attentions.i` (when `kind` has attention) for each `i` of
/// `resnets`, created in that interleaved order as diffusers' `Attn*Block2D` construct them (the
/// same draws under the same seed); `resnets` gives each block's config.
fn resnets_and_attentions(
    vs: &nn::Path,
    common: &BlockCommon,
    resnets: impl IntoIterator<Item = ResnetConfig>,
    channels: i64,
    kind: AttentionKind,
) -> Result<(Vec<ResnetBlock2D>, Vec<SpatialAttention>), ModelError> {
    let cfg = common.attention(channels, kind, Some(common.groups), 1.0);
    let (mut blocks, mut attentions) = (Vec::new(), Vec::new());
    for (i, resnet) in resnets.into_iter().enumerate() {
        blocks.push(ResnetBlock2D::new(&(vs / "resnets" / i), &resnet));
        if kind.is_some() {
            attentions.push(SpatialAttention::new(&(vs / "attentions" / i), &cfg)?);
        }
    }
    Ok((blocks, attentions))
}

/// One encoder level: `layers` × (resnet, optional attention), then an optional [`Downsampler`].
/// Every intermediate output (and the downsampled one) is kept as a skip connection.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    downsampler: Option<Downsampler>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: &nn::Path,
        common: &BlockCommon,
        layers: usize,
        in_channels: i64,
        out_channels: i64,
        attention: AttentionKind,
        downsample_padding: Option<i64>,
    ) -> Result<Self, ModelError> {
        let configs = (0..layers).map(|i| {
            let c_in = if i == 0 { in_channels } else { out_channels };
            common.resnet(c_in, out_channels, 1.0)
        });
        let (resnets, attentions) =
            resnets_and_attentions(vs, common, configs, out_channels, attention)?;
        Ok(Self {
            resnets,
            attentions,
            downsampler: downsample_padding.map(|p| {
                let vs = &(vs / "downsamplers" / 0);
                match common.resample {
                    Resample::Conv => {
                        Downsampler::Conv(Box::new(Downsample::new(vs, out_channels, p)))
                    }
                    Resample::Resnet => Downsampler::Resnet(Box::new(ResnetBlock2D::new(
                        vs,
                        &common.resampling_resnet(
                            out_channels,
                            out_channels,
                            1.0,
                            Resampling::Down,
                        ),
                    ))),
                }
            }),
        })
    }

    /// `x` → (output, skip tensors in order of production).
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> (Tensor, Vec<Tensor>) {
        let mut h = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb, train);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h, temb, train);
            skips.push(h.shallow_clone());
        }
        (h, skips)
    }
}

impl DownBlock {
    /// [`crate::InitScheme::ZeroOut`] for this level.
    pub(crate) fn zero_branch_outputs(&self) {
        zero_branch_outputs(&self.resnets, &self.attentions);
        if let Some(down) = &self.downsampler {
            down.zero_branch_output();
        }
    }
}

impl ParamCount for DownBlock {
    fn param_count(&self) -> i64 {
        self.resnets.param_count() + self.attentions.param_count() + self.downsampler.param_count()
    }
}

/// The middle block: resnet, optional attention, resnet, all at the lowest resolution, with
/// outputs divided by `output_scale_factor`.
#[derive(Debug)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    pub(crate) fn new(
        vs: &nn::Path,
        common: &BlockCommon,
        channels: i64,
        attention: AttentionKind,
        attention_norm_groups: Option<i64>,
        output_scale_factor: f64,
    ) -> Result<Self, ModelError> {
        // resnets.0, attentions.0, resnets.1: diffusers' `UNetMidBlock2D` construction order.
        let cfg = common.resnet(channels, channels, output_scale_factor);
        let first = ResnetBlock2D::new(&(vs / "resnets" / 0), &cfg);
        let attention = if attention.is_some() {
            let cfg = common.attention(
                channels,
                attention,
                attention_norm_groups,
                output_scale_factor,
            );
            Some(SpatialAttention::new(&(vs / "attentions" / 0), &cfg)?)
        } else {
            None
        };
        let second = ResnetBlock2D::new(&(vs / "resnets" / 1), &cfg);
        Ok(Self {
            resnets: vec![first, second],
            attention,
        })
    }

    /// `[B, C, h, w]` → `[B, C, h, w]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let mut h = self.resnets[0].forward(x, temb, train);
        if let Some(attn) = &self.attention {
            h = attn.forward(&h);
        }
        self.resnets[1].forward(&h, temb, train)
    }
}

impl MidBlock {
    /// [`crate::InitScheme::ZeroOut`] for the middle block.
    pub(crate) fn zero_branch_outputs(&self) {
        zero_branch_outputs(&self.resnets, self.attention.as_slice());
    }
}

impl ParamCount for MidBlock {
    fn param_count(&self) -> i64 {
        self.resnets.param_count() + self.attention.param_count()
    }
}

/// One decoder level: `layers` × (concat a skip, resnet, optional attention), then an optional
/// [`Upsampler`].
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialAttention>,
    upsampler: Option<Upsampler>,
}

impl UpBlock {
    /// `skip_channels[i]` is the width of the skip consumed by resnet `i`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: &nn::Path,
        common: &BlockCommon,
        prev_channels: i64,
        out_channels: i64,
        skip_channels: &[i64],
        attention: AttentionKind,
        upsample: bool,
    ) -> Result<Self, ModelError> {
        let configs = skip_channels.iter().enumerate().map(|(i, &skip)| {
            let c_in = if i == 0 { prev_channels } else { out_channels };
            common.resnet(c_in + skip, out_channels, 1.0)
        });
        let (resnets, attentions) =
            resnets_and_attentions(vs, common, configs, out_channels, attention)?;
        Ok(Self {
            resnets,
            attentions,
            upsampler: upsample.then(|| {
                let vs = &(vs / "upsamplers" / 0);
                match common.resample {
                    Resample::Conv => Upsampler::Conv(Box::new(Upsample::new(vs, out_channels))),
                    Resample::Resnet => Upsampler::Resnet(Box::new(ResnetBlock2D::new(
                        vs,
                        &common.resampling_resnet(out_channels, out_channels, 1.0, Resampling::Up),
                    ))),
                }
            }),
        })
    }

    /// Number of skip connections this level consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `x` plus skips popped from the end of `skips` → output.
    ///
    /// # Panics
    /// If `skips` holds fewer than [`UpBlock::num_skips`] tensors.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        train: bool,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("UpBlock: not enough skip connections");
            h = resnet.forward(&Tensor::cat(&[h, skip], 1), temb, train);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&h, temb, train),
            None => h,
        }
    }
}

impl UpBlock {
    /// [`crate::InitScheme::ZeroOut`] for this level.
    pub(crate) fn zero_branch_outputs(&self) {
        zero_branch_outputs(&self.resnets, &self.attentions);
        if let Some(Upsampler::Resnet(block)) = &self.upsampler {
            block.zero_branch_output();
        }
    }
}

impl ParamCount for UpBlock {
    fn param_count(&self) -> i64 {
        self.resnets.param_count() + self.attentions.param_count() + self.upsampler.param_count()
    }
}

/// The context gain of one decoder level: `h ← h · (1 + W c + b)` per channel, with `c` the
/// context vector (`[B, context_dim]`) — a FiLM-style multiplicative modulation (Perez et al.
/// 2018) in which "context multiplies, time adds". `W` and `b` start at zero, so before
/// training the context leaves the network unchanged (yet `W` still receives gradient
/// `∂L/∂g · cᵀ`). Parameters `weight` `[channels, context_dim]` and `bias` `[channels]`.
#[derive(Debug)]
pub struct ContextGain {
    linear: nn::Linear,
}

impl ContextGain {
    /// `context_dim` → `channels`, zero-initialised, parameters under `vs`.
    pub fn new(vs: &nn::Path, context_dim: i64, channels: i64) -> Self {
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Self {
            linear: nn::linear(vs, context_dim, channels, zero),
        }
    }

    /// `h`: `[B, C, H, W]`, `context`: `[B, context_dim]` → `h · (1 + gain)`.
    pub fn forward(&self, h: &Tensor, context: &Tensor) -> Tensor {
        let gain = self.linear.forward(context).unsqueeze(-1).unsqueeze(-1);
        h * (gain + 1.0)
    }
}

impl ParamCount for ContextGain {
    fn param_count(&self) -> i64 {
        self.linear.param_count()
    }
}
