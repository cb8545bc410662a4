//! Parameter initialisation equal to PyTorch's `torch.nn` defaults, which every PyTorch
//! diffusion recipe (and diffusers' `UNet2DModel`, which overrides none of them) was tuned with.
//!
//! | module | weight | bias |
//! |---|---|---|
//! | `nn.Linear(i, o)`, `nn.Conv2d(i, o, k)` | `kaiming_uniform_(a=√5)`: U(−b, b), b = 1/√fan_in | U(−b, b), same b |
//! | `nn.GroupNorm` | 1 | 0 |
//! | `nn.Embedding` | N(0, 1) | — |
//!
//! with `fan_in = i·k·k` (convolutions) or `i` (linear layers). tch's own `nn::linear` and
//! `nn::conv2d` defaults differ (Kaiming-uniform with the ReLU gain, b = √6/√fan_in, a standard
//! deviation √6 ≈ 2.45 times PyTorch's, and zero convolution biases): a UNet started that way
//! trains to far worse samples at the same recipe, so no model here calls them.
//!
//! The draws are PyTorch's own: each tensor is filled by libtorch's `uniform_`/`normal_` from
//! the global generator, with the bound computed in PyTorch's arithmetic. A model that creates
//! its parameters in the order its PyTorch counterpart constructs its modules (the UNet follows
//! diffusers' `UNet2DModel.__init__`) therefore starts from the very same numbers under the same
//! `manual_seed`. Parameters are drawn on the CPU whatever the store's device and then moved, so
//! a seed gives the same weights on every device.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;

use tch::{Device, Kind, Tensor, nn};

/// How a model's parameters start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// Every layer as the matching `torch.nn` module starts it (the table above).
    #[default]
    Pytorch,
    /// [`InitScheme::Pytorch`], then the last layer of every residual branch (a residual
    /// block's `conv2`, an attention layer's output projection) and the network's output layer
    /// set to zero, as ADM (Dhariwal & Nichol 2021, `zero_module`) and EDM (Karras et al. 2022,
    /// `init_zero`) do: every residual block starts as the identity and the network's output
    /// as 0, so the first ε-prediction loss is `E[ε²] = 1` whatever the depth.
    ZeroOut,
}

impl InitScheme {
    /// Whether this is the default, [`InitScheme::Pytorch`] (configs leave it unwritten, so
    /// the fingerprints of runs made before the option existed still match).
    pub fn is_default(&self) -> bool {
        *self == Self::Pytorch
    }
}

/// `gain / √fan · √3` with `gain = √(2 / (1 + a²))`, `a = √5`: the bound of
/// `torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))`, computed in the same order as PyTorch
/// (so the `uniform_` call receives the same double). Equals `1/√fan_in` up to rounding.
pub fn kaiming_uniform_bound(fan_in: i64) -> f64 {
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a.powi(2))).sqrt();
    let std = gain / (fan_in as f64).sqrt();
    3f64.sqrt() * std
}

/// `1/√fan_in`: the bound of `nn.Linear`'s and `nn.Conv2d`'s bias (0 for an empty fan).
pub fn bias_bound(fan_in: i64) -> f64 {
    if fan_in > 0 {
        1.0 / (fan_in as f64).sqrt()
    } else {
        0.0
    }
}

/// Overwrite `var` in place with `fill` applied to a CPU tensor of its shape (libtorch's
/// global CPU generator, as PyTorch builds modules), whatever the variable's device.
fn redraw(var: &Tensor, fill: impl FnOnce(&mut Tensor)) {
    let _guard = tch::no_grad_guard();
    let mut cpu = Tensor::zeros(var.size(), (Kind::Float, Device::Cpu));
    fill(&mut cpu);
    var.shallow_clone().copy_(&cpu);
}

fn uniform(bound: f64) -> impl FnOnce(&mut Tensor) {
    move |t| {
        let _ = t.uniform_(-bound, bound);
    }
}

/// Zeros for tch to create a variable with, before [`redraw`] fills it (draws nothing).
const ZEROS: nn::Init = nn::Init::Const(0.0);

/// `nn.Linear(in_dim, out_dim)`: `weight` `[out, in]` and `bias` `[out]` under `vs`, as
/// PyTorch draws them (weight first, then bias).
pub fn linear<'a>(vs: impl Borrow<nn::Path<'a>>, in_dim: i64, out_dim: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: ZEROS,
        bs_init: Some(ZEROS),
        bias: true,
    };
    let layer = nn::linear(vs.borrow(), in_dim, out_dim, config);
    redraw(&layer.ws, uniform(kaiming_uniform_bound(in_dim)));
    if let Some(bs) = &layer.bs {
        redraw(bs, uniform(bias_bound(in_dim)));
    }
    layer
}

/// `nn.Conv2d(c_in, c_out, kernel, stride, padding)`: `weight` `[out, in, k, k]` and `bias`
/// `[out]` under `vs`, as PyTorch draws them.
pub fn conv2d<'a>(
    vs: impl Borrow<nn::Path<'a>>,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        ws_init: ZEROS,
        bs_init: ZEROS,
        ..Default::default()
    };
    let layer = nn::conv2d(vs.borrow(), c_in, c_out, kernel, config);
    let fan_in = c_in * kernel * kernel;
    redraw(&layer.ws, uniform(kaiming_uniform_bound(fan_in)));
    if let Some(bs) = &layer.bs {
        redraw(bs, uniform(bias_bound(fan_in)));
    }
    layer
}

/// `nn.GroupNorm(groups, channels, eps)` with affine parameters `weight` = 1, `bias` = 0.
pub fn group_norm<'a>(
    vs: impl Borrow<nn::Path<'a>>,
    groups: i64,
    channels: i64,
    eps: f64,
) -> nn::GroupNorm {
    let config = nn::GroupNormConfig {
        eps,
        ..Default::default()
    };
    // tch's GroupNorm starts as PyTorch's (ones and zeros) and draws nothing.
    nn::group_norm(vs.borrow(), groups, channels, config)
}

/// `nn.Embedding(rows, dim)`: `weight` `[rows, dim]` drawn from N(0, 1).
pub fn embedding<'a>(vs: impl Borrow<nn::Path<'a>>, rows: i64, dim: i64) -> nn::Embedding {
    let config = nn::EmbeddingConfig {
        ws_init: ZEROS,
        ..Default::default()
    };
    let layer = nn::embedding(vs.borrow(), rows, dim, config);
    redraw(&layer.ws, |t| {
        let _ = t.normal_(0.0, 1.0);
    });
    layer
}

/// Set a layer's weight and bias to zero in place (for [`InitScheme::ZeroOut`]).
pub fn zero(weight: &Tensor, bias: Option<&Tensor>) {
    let _guard = tch::no_grad_guard();
    for t in std::iter::once(weight).chain(bias) {
        let _ = t.shallow_clone().zero_();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound in PyTorch's arithmetic is 1/√fan_in to the last few bits.
    #[test]
    fn kaiming_bound_is_one_over_sqrt_fan_in() {
        for fan in [1, 2, 3, 9, 27, 64, 288, 576, 1152] {
            let b = kaiming_uniform_bound(fan);
            assert!((b - bias_bound(fan)).abs() < 1e-15, "{fan}: {b}");
        }
        assert_eq!(bias_bound(0), 0.0);
    }
}
