//! The native UNet configuration: one struct, mirroring the `model:` section of a YAML config.

use serde::{Deserialize, Serialize};

use super::blocks::Resample;
use crate::embeddings::SinusoidalConfig;
use crate::init::InitScheme;
use crate::{AttentionKind, ModelError, TimeConditioning};

/// The sinusoidal code and MLP that embed the timestep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeEmbeddingConfig {
    /// `[cos, sin]` instead of `[sin, cos]` (see [`SinusoidalConfig`]).
    pub flip_sin_to_cos: bool,
    /// Frequency shift `s` (see [`SinusoidalConfig`]).
    pub freq_shift: f64,
    /// Longest period `P` (see [`SinusoidalConfig`]).
    pub max_period: f64,
    /// Width of the sinusoidal code; default: the first level's channels.
    pub sinusoid_dim: Option<i64>,
    /// Width of the embedding after the MLP; default: 4 × the first level's channels.
    pub dim: Option<i64>,
}

impl Default for TimeEmbeddingConfig {
    fn default() -> Self {
        let s = SinusoidalConfig::default();
        Self {
            flip_sin_to_cos: s.flip_sin_to_cos,
            freq_shift: s.freq_shift,
            max_period: s.max_period,
            sinusoid_dim: None,
            dim: None,
        }
    }
}

impl TimeEmbeddingConfig {
    /// The sinusoidal-code part of this config.
    pub fn sinusoidal(&self) -> SinusoidalConfig {
        SinusoidalConfig {
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            max_period: self.max_period,
        }
    }

    /// A sinusoid of width `sin_dim` (named `key` in errors) works with these settings: at least
    /// 2 wide, and its half differs from `freq_shift` (the frequency exponent divides by it).
    pub fn check_sinusoid_dim(&self, key: &'static str, sin_dim: i64) -> Result<(), ModelError> {
        if sin_dim < 2 || (sin_dim / 2) as f64 == self.freq_shift {
            return Err(ModelError::invalid(
                key,
                sin_dim,
                "must be >= 2 and its half must differ from time_embedding.freq_shift",
            ));
        }
        Ok(())
    }

    /// Check the sinusoid settings for a time sinusoid of width `sin_dim`; errors name
    /// `time_embedding.*` and the value.
    pub fn validate_sinusoid(&self, sin_dim: i64) -> Result<(), ModelError> {
        self.check_sinusoid_dim("time_embedding.sinusoid_dim", sin_dim)?;
        if !self.freq_shift.is_finite() {
            return Err(ModelError::invalid(
                "time_embedding.freq_shift",
                self.freq_shift,
                "must be finite",
            ));
        }
        if !(self.max_period > 1.0 && self.max_period.is_finite()) {
            return Err(ModelError::invalid(
                "time_embedding.max_period",
                self.max_period,
                "must be > 1",
            ));
        }
        Ok(())
    }
}

/// The embedding of the low-resolution image's noise-augmentation level (Ho et al. 2022,
/// "Cascaded Diffusion Models", §4.1; Saharia et al. 2022, "Imagen", §2.5): the level `s` is
/// coded like a timestep (the time embedding's sinusoid layout) and mapped by its own
/// two-layer MLP, `linear_2(SiLU(linear_1(sinusoid(s'))))`, added to the time embedding.
/// Integer levels (e.g. a noising timestep index) are coded as they are (`s' = s`); float
/// levels must lie in `[0, 1]` and are coded as `s' = float_scale · s`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseLevelEmbeddingConfig {
    /// Multiplier of float levels in `[0, 1]` before the sinusoidal code (default 1000, so a
    /// float level spans the same range as a 1000-step timestep index).
    pub float_scale: f64,
    /// Width of the sinusoidal code; default: the time embedding's.
    pub sinusoid_dim: Option<i64>,
}

impl Default for NoiseLevelEmbeddingConfig {
    fn default() -> Self {
        Self {
            float_scale: 1000.0,
            sinusoid_dim: None,
        }
    }
}

/// A DDPM-style UNet (Ho et al. 2020, App. B; options of Dhariwal & Nichol 2021):
/// `L` levels of `layers_per_block` residual blocks (optionally each followed by attention),
/// a stride-2 convolution between levels, a middle block (resnet, attention, resnet) and a
/// mirrored decoder with `layers_per_block + 1` blocks per level fed by skip connections.
///
/// Channels come either from `block_out_channels` or from
/// `min(base_channels · channel_mult[i], max_channels)`. Levels are indexed from the
/// highest resolution (0).
///
/// Conditioning routes, all optional and combinable (each adds parameters only when enabled):
/// a class label (`num_classes`, with `null_class`), a multi-hot label vector (`label_dim`),
/// a conditioning image (`cond_channels`), a context vector (`context_dim`), the previous
/// x̂₀ estimate (`self_condition`) and a low-resolution noise level (`lowres_noise_level`).
/// Vectors that describe the sample add to the time embedding; images concatenate to the
/// input; the context multiplies the decoder's features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the noisy input `x_t` (conditioning channels are counted separately).
    pub in_channels: i64,
    /// Channels of the prediction (doubled when `learned_variance`).
    pub out_channels: i64,
    /// Channels per level, explicitly. Exclusive with `base_channels`/`channel_mult`.
    pub block_out_channels: Option<Vec<i64>>,
    /// Channels of level 0 when `block_out_channels` is not given (default 64).
    pub base_channels: Option<i64>,
    /// Per-level multipliers of `base_channels` (default `[1, 2, 2, 2]`).
    pub channel_mult: Option<Vec<i64>>,
    /// Cap on the channels of any level when using `base_channels`.
    pub max_channels: Option<i64>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub layers_per_block: usize,
    /// Attention per level in the encoder (`none`, `full`, `linear`); empty: none anywhere.
    pub attention: Vec<AttentionKind>,
    /// Attention per level in the decoder, indexed like `attention`; default: same as `attention`.
    pub up_attention: Option<Vec<AttentionKind>>,
    /// Attention between the two middle residual blocks.
    pub mid_attention: AttentionKind,
    /// Whether the middle attention normalises its input (GroupNorm).
    pub mid_attention_norm: bool,
    /// Groups of the middle attention's GroupNorm; default: `norm_num_groups`.
    pub attn_norm_num_groups: Option<i64>,
    /// Width of one attention head; `None` (default): one head as wide as the block (DDPM).
    pub attention_head_dim: Option<i64>,
    /// GroupNorm groups everywhere (must divide every channel count).
    pub norm_num_groups: i64,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// Timestep embedding.
    pub time_embedding: TimeEmbeddingConfig,
    /// How residual blocks read the embedding: `add` or `scale_shift` (AdaGN).
    pub time_conditioning: TimeConditioning,
    /// Number of classes for class conditioning; `None`: unconditional.
    pub num_classes: Option<i64>,
    /// Add one embedding row (index `num_classes`) meaning "no label", for classifier-free
    /// guidance.
    pub null_class: bool,
    /// Dropout in residual blocks (training only).
    pub dropout: f64,
    /// Padding of the stride-2 downsampling convolution; 0 pads right/bottom by one instead.
    pub downsample_padding: i64,
    /// Output scale `r` of the middle block's resnets and attention: `out = (x + f(x)) / r`.
    pub mid_block_scale_factor: f64,
    /// Predict a variance interpolation too (Nichol & Dhariwal 2021): doubles `out_channels`.
    pub learned_variance: bool,
    /// Width of a multi-hot (or one-hot) float label vector `v` (`[B, label_dim]`), embedded by
    /// `linear_2(SiLU(linear_1(v)))` (parameters `label_embedding.*`) and added to the time
    /// embedding; the all-zeros vector is the "no label" input of classifier-free guidance.
    /// `None` (default): no label vector.
    pub label_dim: Option<i64>,
    /// Channels of a conditioning image (`[B, cond_channels, H, W]`, e.g. a pose map or an
    /// upsampled low-resolution image) concatenated to `x_t` along channels before `conv_in`
    /// (image-to-image conditioning as in SR3, Saharia et al. 2021, and Palette). Default 0.
    pub cond_channels: i64,
    /// Width of a context vector `c` (`[B, context_dim]`). Each decoder level `i` gets a
    /// linear map `g_i = W_i c + b_i` (parameters `context_gains.i.*`) and its output becomes
    /// `h · (1 + g_i)` per channel ("context multiplies, time adds", a FiLM-style gain, Perez
    /// et al. 2018). `W_i`, `b_i` start at zero, so an untrained context is the identity.
    /// `None` (default): no context.
    pub context_dim: Option<i64>,
    /// Self-conditioning (Chen et al. 2022, "Analog Bits", §3): `out_channels` more input
    /// channels carry the previous estimate of x₀ (zeros when none is given).
    pub self_condition: bool,
    /// Embed a low-resolution image's noise-augmentation level (see
    /// [`NoiseLevelEmbeddingConfig`]; parameters `lowres_noise_embedding.*`), for the
    /// super-resolution stages of a cascade. `None` (default): no such input.
    pub lowres_noise_level: Option<NoiseLevelEmbeddingConfig>,
    /// How resolution changes between levels: `conv` (default) or `resnet` (BigGAN-style
    /// residual blocks that resample inside).
    pub resample: Resample,
    /// How the parameters start: `pytorch` (default; `torch.nn`'s defaults, the draws of
    /// diffusers' `UNet2DModel` under the same seed) or `zero_out` (ADM/EDM: every residual
    /// branch's last layer and the output layer zero). See [`InitScheme`].
    #[serde(skip_serializing_if = "InitScheme::is_default")]
    pub init: InitScheme,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: None,
            base_channels: None,
            channel_mult: None,
            max_channels: None,
            layers_per_block: 2,
            attention: Vec::new(),
            up_attention: None,
            mid_attention: AttentionKind::Full,
            mid_attention_norm: true,
            attn_norm_num_groups: None,
            attention_head_dim: None,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            time_embedding: TimeEmbeddingConfig::default(),
            time_conditioning: TimeConditioning::Add,
            num_classes: None,
            null_class: false,
            dropout: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            learned_variance: false,
            label_dim: None,
            cond_channels: 0,
            context_dim: None,
            self_condition: false,
            lowres_noise_level: None,
            resample: Resample::Conv,
            init: InitScheme::Pytorch,
        }
    }
}

fn positive(key: &str, value: i64) -> Result<i64, ModelError> {
    if value >= 1 {
        Ok(value)
    } else {
        Err(ModelError::invalid(key, value, "must be >= 1"))
    }
}

fn list<T: std::fmt::Debug>(values: &[T]) -> String {
    format!("{values:?}")
}

/// The most resnet layers per UNet level a config may ask for (published UNets use 1–4).
pub const MAX_LAYERS_PER_BLOCK: usize = 64;

/// The most levels a UNet may have (each halves the image).
pub const MAX_LEVELS: usize = 16;

/// The most channels of a UNet level (published UNets use at most a few thousand).
pub const MAX_CHANNELS: i64 = 1 << 16;

impl UNetConfig {
    /// Channels of each level, resolved from `block_out_channels` or
    /// `base_channels`/`channel_mult`/`max_channels`.
    pub fn block_channels(&self) -> Result<Vec<i64>, ModelError> {
        let derived = self.base_channels.is_some()
            || self.channel_mult.is_some()
            || self.max_channels.is_some();
        let channels = match &self.block_out_channels {
            Some(explicit) => {
                if derived {
                    return Err(ModelError::invalid(
                        "block_out_channels",
                        list(explicit),
                        "give either block_out_channels or base_channels/channel_mult/max_channels, not both",
                    ));
                }
                explicit.clone()
            }
            None => {
                let base = positive("base_channels", self.base_channels.unwrap_or(64))?;
                let mult = self
                    .channel_mult
                    .clone()
                    .unwrap_or_else(|| vec![1, 2, 2, 2]);
                for &m in &mult {
                    if m < 1 {
                        return Err(ModelError::invalid(
                            "channel_mult",
                            list(&mult),
                            "multipliers must be >= 1",
                        ));
                    }
                }
                let cap = match self.max_channels {
                    Some(c) => positive("max_channels", c)?,
                    None => i64::MAX,
                };
                mult.iter().map(|m| (base * m).min(cap)).collect()
            }
        };
        if channels.is_empty() {
            return Err(ModelError::invalid(
                "block_out_channels",
                "[]",
                "need at least one level",
            ));
        }
        if channels.iter().any(|&c| c < 1) {
            return Err(ModelError::invalid(
                "block_out_channels",
                list(&channels),
                "channels must be >= 1",
            ));
        }
        Ok(channels)
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> Result<usize, ModelError> {
        Ok(self.block_channels()?.len())
    }

    /// Encoder attention at `level`.
    pub fn down_attention(&self, level: usize) -> AttentionKind {
        self.attention.get(level).copied().unwrap_or_default()
    }

    /// Decoder attention at `level` (indexed like the encoder).
    pub fn up_attention(&self, level: usize) -> AttentionKind {
        match &self.up_attention {
            Some(up) => up.get(level).copied().unwrap_or_default(),
            None => self.down_attention(level),
        }
    }

    /// Width of the sinusoidal timestep code.
    pub fn sinusoid_dim(&self) -> Result<i64, ModelError> {
        Ok(match self.time_embedding.sinusoid_dim {
            Some(d) => d,
            None => self.block_channels()?[0],
        })
    }

    /// Width of the time embedding read by every residual block.
    pub fn time_embed_dim(&self) -> Result<i64, ModelError> {
        Ok(match self.time_embedding.dim {
            Some(d) => d,
            None => 4 * self.block_channels()?[0],
        })
    }

    /// Rows of the class embedding (`num_classes`, plus one with `null_class`), if any.
    pub fn class_rows(&self) -> Option<i64> {
        self.num_classes.map(|n| n + i64::from(self.null_class))
    }

    /// Channels the network outputs (`out_channels`, doubled with `learned_variance`).
    pub fn model_out_channels(&self) -> i64 {
        if self.learned_variance {
            2 * self.out_channels
        } else {
            self.out_channels
        }
    }

    /// Channels `conv_in` reads: `in_channels + cond_channels (+ out_channels with
    /// self_condition)`, in that order along the channel axis.
    pub fn conv_in_channels(&self) -> i64 {
        self.in_channels
            + self.cond_channels
            + if self.self_condition {
                self.out_channels
            } else {
                0
            }
    }

    /// Width of the sinusoidal code of the low-resolution noise level, if embedded.
    pub fn noise_level_sinusoid_dim(&self) -> Result<Option<i64>, ModelError> {
        match &self.lowres_noise_level {
            None => Ok(None),
            Some(n) => Ok(Some(match n.sinusoid_dim {
                Some(d) => d,
                None => self.sinusoid_dim()?,
            })),
        }
    }

    /// Head width of an attention layer in a block with `channels` channels.
    pub fn head_dim(&self, channels: i64) -> i64 {
        self.attention_head_dim.unwrap_or(channels)
    }

    /// Check every value; the error names the key and value.
    pub fn validate(&self) -> Result<(), ModelError> {
        let channels = self.block_channels()?;
        let levels = channels.len();
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        if !(1..=MAX_LAYERS_PER_BLOCK).contains(&self.layers_per_block) {
            return Err(ModelError::invalid(
                "layers_per_block",
                self.layers_per_block,
                format!("must be in 1..={MAX_LAYERS_PER_BLOCK}"),
            ));
        }
        if levels > MAX_LEVELS {
            return Err(ModelError::invalid(
                "block_out_channels",
                list(&channels),
                format!("at most {MAX_LEVELS} levels"),
            ));
        }
        if let Some(&c) = channels.iter().find(|&&c| !(1..=MAX_CHANNELS).contains(&c)) {
            return Err(ModelError::invalid(
                "block_out_channels",
                list(&channels),
                format!("every level needs 1..={MAX_CHANNELS} channels ({c})"),
            ));
        }
        for (key, kinds) in [
            ("attention", Some(&self.attention)),
            ("up_attention", self.up_attention.as_ref()),
        ] {
            if let Some(kinds) = kinds
                && !kinds.is_empty()
                && kinds.len() != levels
            {
                return Err(ModelError::invalid(
                    key,
                    list(kinds),
                    format!("need one entry per level ({levels}) or none"),
                ));
            }
        }
        let groups = positive("norm_num_groups", self.norm_num_groups)?;
        if let Some(&c) = channels.iter().find(|&&c| c % groups != 0) {
            return Err(ModelError::invalid(
                "norm_num_groups",
                groups,
                format!(
                    "must divide every level's channels ({c} in {})",
                    list(&channels)
                ),
            ));
        }
        let last = channels[levels - 1];
        if self.mid_attention.is_some() && self.mid_attention_norm {
            let g = positive(
                "attn_norm_num_groups",
                self.attn_norm_num_groups.unwrap_or(groups),
            )?;
            if last % g != 0 {
                return Err(ModelError::invalid(
                    "attn_norm_num_groups",
                    g,
                    format!("must divide the last level's channels ({last})"),
                ));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(ModelError::invalid(
                "norm_eps",
                self.norm_eps,
                "must be > 0",
            ));
        }
        if let Some(d) = self.attention_head_dim {
            positive("attention_head_dim", d)?;
            let attn_channels = (0..levels)
                .filter(|&l| self.down_attention(l).is_some() || self.up_attention(l).is_some())
                .map(|l| channels[l])
                .chain(self.mid_attention.is_some().then_some(last));
            for c in attn_channels {
                if d > c {
                    return Err(ModelError::invalid(
                        "attention_head_dim",
                        d,
                        format!("wider than an attention block's channels ({c})"),
                    ));
                }
            }
        }
        let te = &self.time_embedding;
        let sinusoid = |key: &'static str, sin_dim: i64| te.check_sinusoid_dim(key, sin_dim);
        te.validate_sinusoid(self.sinusoid_dim()?)?;
        positive("time_embedding.dim", self.time_embed_dim()?)?;
        if let Some(n) = self.num_classes {
            positive("num_classes", n)?;
        } else if self.null_class {
            return Err(ModelError::invalid("null_class", true, "needs num_classes"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::invalid(
                "dropout",
                self.dropout,
                "must be in [0, 1)",
            ));
        }
        if !(0..=1).contains(&self.downsample_padding) {
            return Err(ModelError::invalid(
                "downsample_padding",
                self.downsample_padding,
                "must be 0 or 1 (other values change the feature-map size)",
            ));
        }
        if !(self.mid_block_scale_factor > 0.0 && self.mid_block_scale_factor.is_finite()) {
            return Err(ModelError::invalid(
                "mid_block_scale_factor",
                self.mid_block_scale_factor,
                "must be > 0",
            ));
        }
        if let Some(d) = self.label_dim {
            positive("label_dim", d)?;
        }
        if self.cond_channels < 0 {
            return Err(ModelError::invalid(
                "cond_channels",
                self.cond_channels,
                "must be >= 0",
            ));
        }
        if let Some(d) = self.context_dim {
            positive("context_dim", d)?;
        }
        if let Some(noise) = &self.lowres_noise_level {
            if !(noise.float_scale > 0.0 && noise.float_scale.is_finite()) {
                return Err(ModelError::invalid(
                    "lowres_noise_level.float_scale",
                    noise.float_scale,
                    "must be > 0",
                ));
            }
            if let Some(d) = self.noise_level_sinusoid_dim()? {
                sinusoid("lowres_noise_level.sinusoid_dim", d)?;
            }
        }
        Ok(())
    }
}
