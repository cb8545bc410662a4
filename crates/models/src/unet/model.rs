//! The UNet: embeddings, encoder, middle block, decoder.

use tch::{Device, Kind, Tensor, nn, nn::Module};

use super::blocks::{BlockCommon, DownBlock, MidBlock, UpBlock};
use super::summary::{ModelSummary, SummaryRow};
use crate::embeddings::{ClassEmbedding, TimestepEmbedding, sinusoidal_embedding};
use crate::params::ParamCount;
use crate::resnet::{conv3x3, group_norm};
use crate::{ModelError, UNetConfig};

/// A UNet denoiser `f(x_t, t, y)` (Ronneberger et al. 2015 as adapted by Ho et al. 2020),
/// configured by [`UNetConfig`]. Its parameter names equal diffusers' `UNet2DModel`
/// (`conv_in`, `time_embedding.linear_1`, `class_embedding`, `down_blocks.i.resnets.j.conv1`,
/// `mid_block.attentions.0.to_q`, `up_blocks.i.upsamplers.0.conv`, `conv_norm_out`,
/// `conv_out`, …), so diffusers weights load by name.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    channels: Vec<i64>,
    device: Device,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
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
        let common = BlockCommon {
            temb_channels: temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            dropout: config.dropout,
            conditioning: config.time_conditioning,
            head_dim: config.attention_head_dim,
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

        let class_embedding = config
            .class_rows()
            .map(|rows| ClassEmbedding::new(&(vs / "class_embedding"), rows, temb));
        Ok(Self {
            conv_in: conv3x3(vs / "conv_in", config.in_channels, c0, 1, 1),
            time_embedding: TimestepEmbedding::new(
                &(vs / "time_embedding"),
                config.sinusoid_dim()?,
                temb,
            ),
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
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
        })
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
            + self.down_blocks.param_count()
            + self.mid_block.param_count()
            + self.up_blocks.param_count()
            + self.conv_norm_out.param_count()
            + self.conv_out.param_count()
    }

    /// The network output for `x` (`[B, in_channels, H, W]`), timesteps `t` (int64 or float,
    /// `[B]`, `[1]` or scalar) and, for class-conditional models, `class_labels` (int64 `[B]`;
    /// `None` means the null class when the model has one). `train` enables dropout.
    ///
    /// # Panics
    /// On invalid inputs, with the message of [`UNet::f_forward`]'s error.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.f_forward(x, t, class_labels, train)
            .unwrap_or_else(|e| panic!("UNet::forward: {e}"))
    }

    /// [`UNet::forward`] that checks its inputs and returns an error naming the bad one:
    /// `x` must be 4-D floating with `in_channels` channels and H, W divisible by
    /// 2^(levels−1); `t` must hold 1 or B values; labels must be in range.
    pub fn f_forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let (t, labels) = self.check_inputs(x, t, class_labels)?;
        Ok(self.run(x, &t, labels.as_ref(), train, &mut |_, _| {}))
    }

    /// Per-block output shapes (for a batch of one `height`×`width` input) and parameter
    /// counts; the rows' parameters add up to [`UNet::num_parameters`].
    pub fn summary(&self, height: i64, width: i64) -> Result<ModelSummary, ModelError> {
        let input = [1, self.config.in_channels, height, width];
        let x = Tensor::zeros(input, (Kind::Float, self.device));
        let t = Tensor::zeros([1], (Kind::Int64, self.device));
        let labels = self
            .class_embedding
            .as_ref()
            .map(|_| Tensor::zeros([1], (Kind::Int64, self.device)));
        let (t, labels) = self.check_inputs(&x, &t, labels.as_ref())?;
        let mut shapes: Vec<(String, Vec<i64>)> = Vec::new();
        let _guard = tch::no_grad_guard();
        let _output = self.run(&x, &t, labels.as_ref(), false, &mut |name, out| {
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
            } else {
                match name {
                    "time_embedding" => self.time_embedding.param_count(),
                    "class_embedding" => self.class_embedding.param_count(),
                    "conv_in" => self.conv_in.param_count(),
                    "mid_block" => self.mid_block.param_count(),
                    "conv_norm_out" => self.conv_norm_out.param_count(),
                    "conv_out" => self.conv_out.param_count(),
                    _ => 0,
                }
            }
        };
        let rows: Vec<SummaryRow> = shapes
            .into_iter()
            .map(|(name, output_shape)| SummaryRow {
                params: params(&name),
                name,
                output_shape,
            })
            .collect();
        Ok(ModelSummary {
            input_shape: input.to_vec(),
            total_params: rows.iter().map(|r| r.params).sum(),
            rows,
        })
    }

    /// Validate inputs; returns `t` broadcast to `[B]` and the labels to use, on `x`'s device.
    fn check_inputs(
        &self,
        x: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let size = x.size();
        let bad_x = |reason: String| ModelError::InvalidInput { what: "x", reason };
        if size.len() != 4 {
            return Err(bad_x(format!("expected [B, C, H, W], got shape {size:?}")));
        }
        if !x.is_floating_point() {
            return Err(bad_x(format!(
                "expected a floating tensor, got {:?}",
                x.kind()
            )));
        }
        let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
        if c != self.config.in_channels {
            return Err(bad_x(format!(
                "model has {} input channels, x has shape {size:?}",
                self.config.in_channels
            )));
        }
        let factor = 1i64 << (self.channels.len() - 1);
        if h < 1 || w < 1 || h % factor != 0 || w % factor != 0 {
            return Err(bad_x(format!(
                "height and width must be positive multiples of {factor} (2^(levels-1)), got shape {size:?}"
            )));
        }
        let device = x.device();
        let t_size = t.size();
        if t_size.len() > 1 || !(t.numel() == 1 || t.numel() as i64 == b) {
            return Err(ModelError::InvalidInput {
                what: "t",
                reason: format!("expected [B] (B = {b}), [1] or a scalar, got shape {t_size:?}"),
            });
        }
        if matches!(t.kind(), Kind::Bool) || t.is_complex() {
            return Err(ModelError::InvalidInput {
                what: "t",
                reason: format!("expected an integer or floating tensor, got {:?}", t.kind()),
            });
        }
        let t = t.reshape([-1]).expand([b], false).to_device(device);
        let labels = match (&self.class_embedding, class_labels) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ModelError::InvalidInput {
                    what: "class_labels",
                    reason: "given, but the model has no class embedding (num_classes unset)"
                        .into(),
                });
            }
            (Some(emb), None) => {
                if !self.config.null_class {
                    return Err(ModelError::InvalidInput {
                        what: "class_labels",
                        reason: "required: the model is class-conditional and has no null class"
                            .into(),
                    });
                }
                Some(Tensor::full([b], emb.rows() - 1, (Kind::Int64, device)))
            }
            (Some(emb), Some(labels)) => {
                if labels.kind() != Kind::Int64 || labels.size() != [b] {
                    return Err(ModelError::InvalidInput {
                        what: "class_labels",
                        reason: format!(
                            "expected int64 [B] (B = {b}), got {:?} {:?}",
                            labels.kind(),
                            labels.size()
                        ),
                    });
                }
                let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
                if lo < 0 || hi >= emb.rows() {
                    return Err(ModelError::InvalidInput {
                        what: "class_labels",
                        reason: format!(
                            "values must be in 0..{}, got range {lo}..={hi}",
                            emb.rows()
                        ),
                    });
                }
                Some(labels.to_device(device))
            }
        };
        Ok((t, labels))
    }

    /// The forward pass on checked inputs, reporting each top-level block's output.
    fn run(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
        record: &mut dyn FnMut(&str, &Tensor),
    ) -> Tensor {
        let code = sinusoidal_embedding(
            t,
            self.config.sinusoid_dim().unwrap_or(self.channels[0]),
            &self.config.time_embedding.sinusoidal(),
        )
        .to_kind(x.kind());
        let time_emb = self.time_embedding.forward(&code);
        record("time_embedding", &time_emb);
        let emb = match (&self.class_embedding, labels) {
            (Some(class_embedding), Some(labels)) => {
                let class_emb = class_embedding.forward(labels);
                record("class_embedding", &class_emb);
                time_emb + class_emb
            }
            _ => time_emb,
        };

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
        }
        h = self.conv_norm_out.forward(&h);
        record("conv_norm_out", &h);
        h = self.conv_out.forward(&h.silu());
        record("conv_out", &h);
        h
    }
}
