//! The UNet: embeddings, encoder, middle block, decoder.

use tch::{Device, Kind, Tensor, nn, nn::Module};

use super::blocks::{BlockCommon, ContextGain, DownBlock, MidBlock, UpBlock};
use super::inputs::{Checked, UNetInputs, check};
use super::summary::ModelSummary;
use crate::embeddings::{ClassEmbedding, TimestepEmbedding, sinusoidal_embedding};
use crate::ops::{self, Conv2d};
use crate::params::ParamCount;
use crate::resnet::{conv3x3, group_norm};
use crate::{InitScheme, ModelError, UNetConfig};

/// A UNet denoiser `f(x_t, t, y)` (Ronneberger et al. 2015 as adapted by Ho et al. 2020),
/// configured by [`UNetConfig`]. Its parameter names equal diffusers' `UNet2DModel`
/// (`conv_in`, `time_embedding.linear_1`, `class_embedding`, `down_blocks.i.resnets.j.conv1`,
/// `mid_block.attentions.0.to_q`, `up_blocks.i.upsamplers.0.conv`, `conv_norm_out`,
/// `conv_out`, …), so diffusers weights load by name. The conditioning routes diffusers lacks
/// add their own parameters only when enabled: `label_embedding.*`,
/// `lowres_noise_embedding.*`, `context_gains.i.*` (and wider `conv_in` for conditioning and
/// self-conditioning channels).
///
/// The conditioning vector read by every residual block is
/// `e = MLP_t(sin(t)) [+ E[y]] [+ MLP_v(v)] [+ MLP_s(sin(s))]` (time, class, label vector,
/// low-resolution noise level); the input is `[x_t, image, x̂₀]` along channels; decoder level
/// `i`'s output is multiplied by `1 + g_i(c)` for a context `c`.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    channels: Vec<i64>,
    device: Device,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    label_embedding: Option<TimestepEmbedding>,
    lowres_noise_embedding: Option<TimestepEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    context_gains: Vec<ContextGain>,
    conv_norm_out: nn::GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// Validate `config` and create the parameters under `vs`.
    pub fn new(vs: &nn::Path, config: &UNetConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let channels = config.block_channels()?;
        let levels = channels.len();
        let c0 = channels[0];
        let temb = config.time_embed_dim()?;
        let layers = config.layers_per_block;
        // Modules in diffusers' `UNet2DModel.__init__` order (embeddings, encoder, middle,
        // decoder, output): the same draws as diffusers under the same seed.
        let conv_in = conv3x3(vs / "conv_in", config.conv_in_channels(), c0, 1, 1);
        let time_embedding =
            TimestepEmbedding::new(&(vs / "time_embedding"), config.sinusoid_dim()?, temb);
        let class_embedding = config
            .class_rows()
            .map(|rows| ClassEmbedding::new(&(vs / "class_embedding"), rows, temb));
        let label_embedding = config
            .label_dim
            .map(|d| TimestepEmbedding::new(&(vs / "label_embedding"), d, temb));
        let lowres_noise_embedding = config
            .noise_level_sinusoid_dim()?
            .map(|d| TimestepEmbedding::new(&(vs / "lowres_noise_embedding"), d, temb));
        let common = BlockCommon {
            temb_channels: temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            dropout: config.dropout,
            conditioning: config.time_conditioning,
            head_dim: config.attention_head_dim,
            resample: config.resample,
        };

        // Encoder; record the width of every skip connection as it is pushed.
        let mut skip_widths = vec![c0];
        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_in = c0;
        for (level, &c) in channels.iter().enumerate() {
            let last = level + 1 == levels;
            let padding = (!last).then_some(config.downsample_padding);
            down_blocks.push(DownBlock::new(
                &(vs / "down_blocks" / level),
                &common,
                layers,
                c_in,
                c,
                config.down_attention(level),
                padding,
            )?);
            skip_widths.extend(std::iter::repeat_n(c, layers + usize::from(!last)));
            c_in = c;
        }

        let mid_norm = config.mid_attention_norm.then(|| {
            config
                .attn_norm_num_groups
                .unwrap_or(config.norm_num_groups)
        });
        let mid_block = MidBlock::new(
            &(vs / "mid_block"),
            &common,
            channels[levels - 1],
            config.mid_attention,
            mid_norm,
            config.mid_block_scale_factor,
        )?;

        // Decoder: each level pops `layers + 1` skips from the end.
        let mut up_blocks = Vec::with_capacity(levels);
        let mut prev = channels[levels - 1];
        for i in 0..levels {
            let level = levels - 1 - i;
            let skips: Vec<i64> = (0..=layers)
                .map(|_| skip_widths.pop().unwrap_or(0))
                .collect();
            up_blocks.push(UpBlock::new(
                &(vs / "up_blocks" / i),
                &common,
                prev,
                channels[level],
                &skips,
                config.up_attention(level),
                level > 0,
            )?);
            prev = channels[level];
        }

        let context_gains = match config.context_dim {
            Some(d) => (0..levels)
                .map(|i| ContextGain::new(&(vs / "context_gains" / i), d, channels[levels - 1 - i]))
                .collect(),
            None => Vec::new(),
        };
        let model = Self {
            conv_in,
            time_embedding,
            class_embedding,
            label_embedding,
            lowres_noise_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            context_gains,
            conv_norm_out: group_norm(
                vs / "conv_norm_out",
                config.norm_num_groups,
                c0,
                config.norm_eps,
            ),
            conv_out: conv3x3(vs / "conv_out", c0, config.model_out_channels(), 1, 1),
            config: config.clone(),
            channels,
            device: vs.device(),
        };
        if config.init == InitScheme::ZeroOut {
            model.zero_out();
        }
        Ok(model)
    }

    /// [`InitScheme::ZeroOut`]: zero every residual branch's last layer (resnet `conv2`,
    /// attention `to_out.0`, also in resampling blocks) and `conv_out`.
    fn zero_out(&self) {
        for block in &self.down_blocks {
            block.zero_branch_outputs();
        }
        self.mid_block.zero_branch_outputs();
        for block in &self.up_blocks {
            block.zero_branch_outputs();
        }
        self.conv_out.zero();
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Channels of each level.
    pub fn block_channels(&self) -> &[i64] {
        &self.channels
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> i64 {
        self.conv_in.param_count()
            + self.time_embedding.param_count()
            + self.class_embedding.param_count()
            + self.label_embedding.param_count()
            + self.lowres_noise_embedding.param_count()
            + self.down_blocks.param_count()
            + self.mid_block.param_count()
            + self.up_blocks.param_count()
            + self.context_gains.param_count()
            + self.conv_norm_out.param_count()
            + self.conv_out.param_count()
    }

    /// The network output for `x` (`[B, in_channels, H, W]`), timesteps `t` (int64 or float,
    /// `[B]`, `[1]` or scalar) and every conditioning input in `inputs` (see [`UNetInputs`]
    /// for shapes and defaults; [`UNetInputs::classes`] for a class-conditional or
    /// unconditional model). The output is `[B, out_channels (×2 with learned_variance), H,
    /// W]`. `train` enables dropout.
    ///
    /// # Panics
    /// On invalid inputs, with the message of [`UNet::try_forward`]'s error.
    pub fn forward(&self, x: &Tensor, t: &Tensor, inputs: &UNetInputs<'_>, train: bool) -> Tensor {
        self.try_forward(x, t, inputs, train)
            .unwrap_or_else(|e| panic!("UNet::forward: {e}"))
    }

    /// [`UNet::forward`] that checks its inputs and returns an error naming the bad one
    /// instead of panicking: `x` must be 4-D floating with `in_channels` channels and H, W
    /// divisible by 2^(levels−1); `t` must hold 1 or B values; and each of `class_labels`,
    /// `label_vector`, `cond_image`, `context`, `self_cond` and `lowres_noise_level` must have
    /// the right shape, dtype and range, be given when the model has its route and be absent
    /// when it has not.
    pub fn try_forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        inputs: &UNetInputs<'_>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let checked = check(&self.config, self.channels.len(), x, t, inputs)?;
        Ok(self.run(&checked, train, &mut |_, _| {}))
    }

    /// Per-block output shapes (for a batch of one `height`×`width` input) and parameter
    /// counts; the rows' parameters add up to [`UNet::num_parameters`].
    pub fn summary(&self, height: i64, width: i64) -> Result<ModelSummary, ModelError> {
        let cfg = &self.config;
        let input = [1, cfg.in_channels, height, width];
        let float = (Kind::Float, self.device);
        let int = (Kind::Int64, self.device);
        let x = Tensor::zeros(input, float);
        let t = Tensor::zeros([1], int);
        let labels = self
            .class_embedding
            .as_ref()
            .map(|_| Tensor::zeros([1], int));
        let label_vector = cfg.label_dim.map(|d| Tensor::zeros([1, d], float));
        let cond_image = (cfg.cond_channels > 0)
            .then(|| Tensor::zeros([1, cfg.cond_channels, height, width], float));
        let context = cfg.context_dim.map(|d| Tensor::zeros([1, d], float));
        let noise_level = cfg.lowres_noise_level.map(|_| Tensor::zeros([1], int));
        let inputs = UNetInputs {
            class_labels: labels.as_ref(),
            label_vector: label_vector.as_ref(),
            cond_image: cond_image.as_ref(),
            context: context.as_ref(),
            self_cond: None,
            lowres_noise_level: noise_level.as_ref(),
        };
        let checked = check(cfg, self.channels.len(), &x, &t, &inputs)?;
        let mut shapes: Vec<(String, Vec<i64>)> = Vec::new();
        let _guard = tch::no_grad_guard();
        let _output = self.run(&checked, false, &mut |name, out| {
            shapes.push((name.to_string(), out.size()));
        });
        let params = |name: &str| -> i64 {
            let index = |prefix: &str| {
                name.strip_prefix(prefix)
                    .and_then(|i| i.parse::<usize>().ok())
            };
            if let Some(i) = index("down_blocks.") {
                self.down_blocks[i].param_count()
            } else if let Some(i) = index("up_blocks.") {
                self.up_blocks[i].param_count()
            } else if let Some(i) = index("context_gains.") {
                self.context_gains[i].param_count()
            } else {
                match name {
                    "time_embedding" => self.time_embedding.param_count(),
                    "class_embedding" => self.class_embedding.param_count(),
                    "label_embedding" => self.label_embedding.param_count(),
                    "lowres_noise_embedding" => self.lowres_noise_embedding.param_count(),
                    "conv_in" => self.conv_in.param_count(),
                    "mid_block" => self.mid_block.param_count(),
                    "conv_norm_out" => self.conv_norm_out.param_count(),
                    "conv_out" => self.conv_out.param_count(),
                    _ => 0,
                }
            }
        };
        Ok(ModelSummary::from_blocks(&input, shapes, params))
    }

    /// The forward pass on checked inputs, reporting each top-level block's output.
    fn run(&self, inputs: &Checked, train: bool, record: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        let x = &inputs.x;
        let te = self.config.time_embedding.sinusoidal();
        let code = sinusoidal_embedding(
            &inputs.t,
            self.config.sinusoid_dim().unwrap_or(self.channels[0]),
            &te,
        )
        .to_kind(x.kind());
        let mut emb = self.time_embedding.forward(&code);
        record("time_embedding", &emb);
        if let (Some(class_embedding), Some(labels)) = (&self.class_embedding, &inputs.labels) {
            let class_emb = class_embedding.forward(labels);
            record("class_embedding", &class_emb);
            emb = &emb + class_emb;
        }
        if let (Some(mlp), Some(v)) = (&self.label_embedding, &inputs.label_vector) {
            let label_emb = mlp.forward(v);
            record("label_embedding", &label_emb);
            emb = &emb + label_emb;
        }
        if let (Some(mlp), Some(level)) = (&self.lowres_noise_embedding, &inputs.noise_level) {
            let dim = self
                .config
                .noise_level_sinusoid_dim()
                .ok()
                .flatten()
                .unwrap_or(self.channels[0]);
            let code = sinusoidal_embedding(level, dim, &te).to_kind(x.kind());
            let noise_emb = mlp.forward(&code);
            record("lowres_noise_embedding", &noise_emb);
            emb = &emb + noise_emb;
        }

        let mut h = self.conv_in.forward(x);
        record("conv_in", &h);
        let mut skips = vec![h.shallow_clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, block_skips) = block.forward(&h, &emb, train);
            h = out;
            skips.extend(block_skips);
            record(&format!("down_blocks.{i}"), &h);
        }
        h = self.mid_block.forward(&h, &emb, train);
        record("mid_block", &h);
        for (i, block) in self.up_blocks.iter().enumerate() {
            h = block.forward(&h, &mut skips, &emb, train);
            record(&format!("up_blocks.{i}"), &h);
            if let (Some(gain), Some(context)) = (self.context_gains.get(i), &inputs.context) {
                h = gain.forward(&h, context);
                record(&format!("context_gains.{i}"), &h);
            }
        }
        h = self.conv_norm_out.forward(&h);
        record("conv_norm_out", &h);
        h = self.conv_out.forward(&ops::silu(&h));
        record("conv_out", &h);
        h
    }
}
