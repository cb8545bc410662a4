//! An MLP denoiser for vector data (the 2-D toy problems: spiral, disc grid), as used to show
//! DDPM end to end (Ho et al. 2020 on 2-D data; Sohl-Dickstein et al. 2015, §3).
//!
//! `e = MLP_t(sin(t))` (the UNet's sinusoidal code and two-layer time MLP), then
//! `h₀ = W_in x`, `h_{i+1} = act(W_i h_i + U_i act(e))` for `i < layers`, and `out = W_out h_L`.
//! The time embedding is *added* to every hidden layer through its own projection `U_i`
//! (rather than concatenated to the input once), so time reaches every depth.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::Module};

use crate::ModelError;
use crate::embeddings::{TimestepEmbedding, sinusoidal_embedding};
use crate::init::{self, InitScheme};
use crate::ops;
use crate::params::ParamCount;
use crate::unet::{ModelSummary, TimeEmbeddingConfig};

/// The nonlinearity of the [`MlpDenoiser`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x·σ(x)` (Elfwing et al. 2018; Ramachandran et al. 2017 "Swish").
    #[default]
    Silu,
    /// `x·Φ(x)`, exact (Hendrycks & Gimpel 2016).
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Apply the nonlinearity elementwise.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Silu => ops::silu(x),
            Self::Gelu => x.gelu("none"),
            Self::Relu => x.relu(),
        }
    }

    /// [`Activation::apply`] to a fresh tensor nothing else refers to, in place where that
    /// needs no autograd record ([`ops::silu_owned`] for SiLU).
    pub fn apply_owned(self, x: Tensor) -> Tensor {
        match self {
            Self::Silu => ops::silu_owned(x),
            Self::Gelu => x.gelu("none"),
            Self::Relu if x.requires_grad() => x.relu(),
            Self::Relu => {
                let mut x = x;
                let _ = x.relu_();
                x
            }
        }
    }
}

/// Configuration of an [`MlpDenoiser`], mirroring the `model:` section of a toy YAML config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Dimension `D` of a data point (2 for the 2-D toys).
    pub data_dim: i64,
    /// Width of every hidden layer.
    pub hidden: i64,
    /// Number of hidden layers (each `Linear + time projection + activation`).
    pub layers: usize,
    /// Timestep embedding; `sinusoid_dim` and `dim` default to `hidden`.
    pub time_embedding: TimeEmbeddingConfig,
    /// Nonlinearity: `silu` (default), `gelu` or `relu`.
    pub activation: Activation,
    /// How the parameters start: `pytorch` (default) or `zero_out` (the output layer zero).
    #[serde(skip_serializing_if = "InitScheme::is_default")]
    pub init: InitScheme,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            data_dim: 2,
            hidden: 256,
            layers: 3,
            time_embedding: TimeEmbeddingConfig::default(),
            activation: Activation::Silu,
            init: InitScheme::Pytorch,
        }
    }
}

impl MlpConfig {
    /// Width of the sinusoidal timestep code.
    pub fn sinusoid_dim(&self) -> i64 {
        self.time_embedding.sinusoid_dim.unwrap_or(self.hidden)
    }

    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding.dim.unwrap_or(self.hidden)
    }

    /// Check every value; the error names the key and value.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (key, value) in [
            ("data_dim", self.data_dim),
            ("hidden", self.hidden),
            ("time_embedding.dim", self.time_embed_dim()),
        ] {
            if !(1..=1 << 20).contains(&value) {
                return Err(ModelError::invalid(key, value, "must be in 1..=1048576"));
            }
        }
        if !(1..=1024).contains(&self.layers) {
            return Err(ModelError::invalid(
                "layers",
                self.layers,
                "must be in 1..=1024",
            ));
        }
        self.time_embedding.validate_sinusoid(self.sinusoid_dim())?;
        Ok(())
    }
}

/// One hidden layer: `act(linear(h) + time_proj(act(e)))`.
#[derive(Debug)]
pub(crate) struct MlpLayer {
    pub(crate) linear: nn::Linear,
    pub(crate) time_proj: nn::Linear,
}

impl ParamCount for MlpLayer {
    fn param_count(&self) -> i64 {
        self.linear.param_count() + self.time_proj.param_count()
    }
}

/// An MLP denoiser `f(x_t, t)`: `[B, D]` → `[B, D]`; see the [module docs](self). Parameter
/// names: `time_embedding.linear_{1,2}`, `input`, `layers.i.linear`, `layers.i.time_proj`,
/// `output`.
#[derive(Debug)]
pub struct MlpDenoiser {
    pub(crate) config: MlpConfig,
    device: Device,
    pub(crate) time_embedding: TimestepEmbedding,
    pub(crate) input: nn::Linear,
    pub(crate) layers: Vec<MlpLayer>,
    pub(crate) output: nn::Linear,
}

impl MlpDenoiser {
    /// Validate `config` and create the parameters under `vs`.
    pub fn new(vs: &nn::Path, config: &MlpConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let (d, hidden, temb) = (config.data_dim, config.hidden, config.time_embed_dim());
        // Fields in the order a PyTorch module would construct them (time embedding, input,
        // layers, output): the parity goldens build the same MLP in PyTorch under one seed.
        let model = Self {
            time_embedding: TimestepEmbedding::new(
                &(vs / "time_embedding"),
                config.sinusoid_dim(),
                temb,
            ),
            input: init::linear(vs / "input", d, hidden),
            layers: (0..config.layers)
                .map(|i| MlpLayer {
                    linear: init::linear(vs / "layers" / i / "linear", hidden, hidden),
                    time_proj: init::linear(vs / "layers" / i / "time_proj", temb, hidden),
                })
                .collect(),
            output: init::linear(vs / "output", hidden, d),
            config: config.clone(),
            device: vs.device(),
        };
        if config.init == InitScheme::ZeroOut {
            init::zero(&model.output.ws, model.output.bs.as_ref());
        }
        Ok(model)
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> i64 {
        self.time_embedding.param_count()
            + self.input.param_count()
            + self.layers.param_count()
            + self.output.param_count()
    }

    /// The prediction for `x` (`[B, data_dim]`, floating) at timesteps `t` (int64 or float,
    /// `[B]`, `[1]` or scalar).
    ///
    /// # Panics
    /// On invalid inputs, with the message of [`MlpDenoiser::try_forward`]'s error.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self.try_forward(x, t)
            .unwrap_or_else(|e| panic!("MlpDenoiser::forward: {e}"))
    }

    /// [`MlpDenoiser::forward`] returning an error that names the bad input (`x` or `t`)
    /// instead of panicking.
    pub fn try_forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor, ModelError> {
        let t = self.check(x, t)?;
        Ok(self.run(x, &t, &mut |_, _| {}))
    }

    /// Per-layer output shapes (for a batch of one) and parameter counts; the rows'
    /// parameters add up to [`MlpDenoiser::num_parameters`].
    pub fn summary(&self) -> Result<ModelSummary, ModelError> {
        let input = [1, self.config.data_dim];
        let x = Tensor::zeros(input, (Kind::Float, self.device));
        let t = self.check(&x, &Tensor::zeros([1], (Kind::Int64, self.device)))?;
        let mut shapes: Vec<(String, Vec<i64>)> = Vec::new();
        let _guard = tch::no_grad_guard();
        let _output = self.run(&x, &t, &mut |name, out| {
            shapes.push((name.to_string(), out.size()));
        });
        let params = |name: &str| match name {
            "time_embedding" => self.time_embedding.param_count(),
            "input" => self.input.param_count(),
            "output" => self.output.param_count(),
            _ => name
                .strip_prefix("layers.")
                .and_then(|i| i.parse::<usize>().ok())
                .map_or(0, |i| self.layers[i].param_count()),
        };
        Ok(ModelSummary::from_blocks(&input, shapes, params))
    }

    /// Check `x` and `t`; returns `t` broadcast to `[B]` on `x`'s device.
    pub(crate) fn check(&self, x: &Tensor, t: &Tensor) -> Result<Tensor, ModelError> {
        let size = x.size();
        let d = self.config.data_dim;
        if size.len() != 2 || size[1] != d || !x.is_floating_point() {
            return Err(ModelError::InvalidInput {
                what: "x",
                reason: format!(
                    "expected a floating [B, {d}] tensor, got {:?} {size:?}",
                    x.kind()
                ),
            });
        }
        let b = size[0];
        let t_size = t.size();
        if t_size.len() > 1
            || !(t.numel() == 1 || t.numel() as i64 == b)
            || matches!(t.kind(), Kind::Bool)
            || t.is_complex()
        {
            return Err(ModelError::InvalidInput {
                what: "t",
                reason: format!(
                    "expected an integer or floating [B] (B = {b}), [1] or scalar, got {:?} {t_size:?}",
                    t.kind()
                ),
            });
        }
        Ok(t.reshape([-1]).expand([b], false).to_device(x.device()))
    }

    fn run(&self, x: &Tensor, t: &Tensor, record: &mut dyn FnMut(&str, &Tensor)) -> Tensor {
        let act = self.config.activation;
        let code = sinusoidal_embedding(
            t,
            self.config.sinusoid_dim(),
            &self.config.time_embedding.sinusoidal(),
        )
        .to_kind(x.kind());
        let emb = self.time_embedding.forward(&code);
        record("time_embedding", &emb);
        let emb = act.apply(&emb);
        let mut h = self.input.forward(x);
        record("input", &h);
        for (i, layer) in self.layers.iter().enumerate() {
            let time = layer.time_proj.forward(&emb);
            h = ops::linear_act(&layer.linear, &h, &time, act == Activation::Silu, |z| {
                act.apply_owned(z)
            });
            record(&format!("layers.{i}"), &h);
        }
        h = self.output.forward(&h);
        record("output", &h);
        h
    }
}
