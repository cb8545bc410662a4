//! Spatial self-attention over the H·W positions of a feature map: full softmax attention
//! (Vaswani et al. 2017, as placed in the DDPM UNet) or linear attention (Shen et al. 2021,
//! "Efficient Attention"; as in lucidrains' `LinearAttention`), which costs O(N·d²) instead of
//! O(N²·d) in the number of positions N.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn, nn::Module};

use crate::ops::{self, AttentionProjections};
use crate::params::ParamCount;
use crate::resnet::group_norm;
use crate::{ModelError, init};

/// Which attention (if any) a UNet level uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// No attention at this level.
    #[default]
    None,
    /// `softmax(Q Kᵀ/√d) V` per head: quadratic in the number of positions.
    Full,
    /// `softmax_d(Q)/√d · (softmax_N(K)ᵀ V)` per head: Q normalised over its features, K over
    /// positions, and Kᵀ V (a d×d matrix) formed first, so the cost is linear in positions.
    Linear,
}

impl AttentionKind {
    /// Whether this level has an attention layer.
    pub fn is_some(self) -> bool {
        self != Self::None
    }
}

/// Shape and options of one [`SpatialAttention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Channels of the feature map (query dimension).
    pub channels: i64,
    /// Width of each head, `d`; the number of heads is `channels / d` (at least 1).
    pub head_dim: i64,
    /// Groups of the input GroupNorm, or `None` for no normalisation.
    pub norm_groups: Option<i64>,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The output is `(attention(x) + x) / rescale_output_factor`.
    pub rescale_output_factor: f64,
    /// [`AttentionKind::Full`] or [`AttentionKind::Linear`].
    pub kind: AttentionKind,
}

/// `out = (to_out(attn(to_q(n), to_k(n), to_v(n))) + x) / r` with `n = GroupNorm(x)` seen as
/// `[B, H·W, C]` tokens. Parameter names follow diffusers' `Attention` as used by its UNet
/// blocks: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Debug)]
pub struct SpatialAttention {
    group_norm: Option<nn::GroupNorm>,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    config: AttentionConfig,
}

impl SpatialAttention {
    /// Create the layer's parameters under `vs`. Fails if `kind` is `None` or if
    /// `channels / head_dim` is not at least 1.
    pub fn new(vs: &nn::Path, config: &AttentionConfig) -> Result<Self, ModelError> {
        let c = config;
        if !c.kind.is_some() {
            return Err(ModelError::invalid(
                "attention",
                "none",
                "an attention layer needs kind full or linear",
            ));
        }
        if c.head_dim < 1 || c.channels / c.head_dim < 1 {
            return Err(ModelError::invalid(
                "attention_head_dim",
                c.head_dim,
                format!(
                    "must be between 1 and the block's channels ({})",
                    c.channels
                ),
            ));
        }
        let heads = c.channels / c.head_dim;
        let inner = heads * c.head_dim;
        let linear = |name: &str, i, o| init::linear(vs / name, i, o);
        Ok(Self {
            group_norm: c
                .norm_groups
                .map(|g| group_norm(vs / "group_norm", g, c.channels, c.eps)),
            to_q: linear("to_q", c.channels, inner),
            to_k: linear("to_k", c.channels, inner),
            to_v: linear("to_v", c.channels, inner),
            to_out: init::linear(vs / "to_out" / 0, inner, c.channels),
            heads,
            config: *config,
        })
    }

    /// Zero the output projection `to_out.0`, so the layer starts as the identity
    /// ([`crate::InitScheme::ZeroOut`]).
    pub fn zero_output(&self) {
        init::zero(&self.to_out.ws, self.to_out.bs.as_ref());
    }

    /// Number of heads.
    pub fn heads(&self) -> i64 {
        self.heads
    }

    /// `[B, C, H, W]` → `[B, C, H, W]`: `(x + to_out(attn(to_q(n), to_k(n), to_v(n)))) / r`
    /// on the tokens of `n = GroupNorm(x)`.
    ///
    /// # Panics
    /// If `x` is not 4-D with `channels` channels (the UNet checks its inputs in `try_forward`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let out = ops::self_attention(
            self.projections(),
            x,
            |x| self.normalise(x),
            |q, k, v| self.attend(q, k, v),
        );
        self.rescale(out)
    }

    /// [`SpatialAttention::forward`] through libtorch's operations whatever the input (the
    /// reference of the tests).
    pub fn forward_libtorch(&self, x: &Tensor) -> Tensor {
        let out = ops::self_attention_libtorch(
            self.projections(),
            x,
            |x| self.normalise(x),
            |q, k, v| self.attend(q, k, v),
        );
        self.rescale(out)
    }

    fn projections(&self) -> AttentionProjections<'_> {
        AttentionProjections {
            to_q: &self.to_q,
            to_k: &self.to_k,
            to_v: &self.to_v,
            to_out: &self.to_out,
            heads: self.heads,
            head_dim: self.config.head_dim,
        }
    }

    /// The input GroupNorm (or `x` itself without one).
    fn normalise(&self, x: &Tensor) -> Tensor {
        match &self.group_norm {
            Some(norm) => norm.forward(x),
            None => x.shallow_clone(),
        }
    }

    /// The configured attention of `[B, heads, N, d]` queries, keys and values.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        match self.config.kind {
            AttentionKind::Linear => linear_attention(q, k, v),
            _ => Tensor::scaled_dot_product_attention(
                q,
                k,
                v,
                None::<&Tensor>,
                0.0,
                false,
                None,
                false,
            ),
        }
    }

    /// `out / rescale_output_factor`.
    fn rescale(&self, out: Tensor) -> Tensor {
        if self.config.rescale_output_factor == 1.0 {
            out
        } else {
            out / self.config.rescale_output_factor
        }
    }
}

/// Linear attention on `[B, heads, N, d]` tensors: `softmax_d(Q)·d^{-1/2} · (softmax_N(K)ᵀ V)`.
pub fn linear_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let d = q.size().last().copied().unwrap_or(1);
    let q = q.softmax(-1, None) * (d as f64).powf(-0.5);
    let k = k.softmax(-2, None);
    let context = k.transpose(-1, -2).matmul(v);
    q.matmul(&context)
}

impl ParamCount for SpatialAttention {
    fn param_count(&self) -> i64 {
        self.group_norm.param_count()
            + self.to_q.param_count()
            + self.to_k.param_count()
            + self.to_v.param_count()
            + self.to_out.param_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn linear_attention_matches_quadratic_form() {
        tch::manual_seed(3);
        let q = Tensor::randn([2, 3, 5, 4], (Kind::Double, Device::Cpu));
        let k = Tensor::randn([2, 3, 5, 4], (Kind::Double, Device::Cpu));
        let v = Tensor::randn([2, 3, 5, 4], (Kind::Double, Device::Cpu));
        // (Q Kᵀ) V computed the quadratic way must equal Q (Kᵀ V).
        let qs = q.softmax(-1, None) * 0.5;
        let ks = k.softmax(-2, None);
        let quadratic = qs.matmul(&ks.transpose(-1, -2)).matmul(&v);
        let diff = (linear_attention(&q, &k, &v) - quadratic)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-12, "{diff}");
        // K is normalised over positions: each feature column of softmax_N(K) sums to 1.
        let sums = ks.sum_dim_intlist([-2i64].as_slice(), false, Kind::Double);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-12);
    }

    /// The batch-1 BLAS path against libtorch's operations: one and several heads, with and
    /// without the norm, a rescaled output, full and linear attention; a batch and grad
    /// recording take libtorch's path.
    #[test]
    fn one_image_path_matches_libtorchs_operations() {
        let f = (Kind::Float, Device::Cpu);
        for (channels, head_dim, norm_groups, rescale, kind) in [
            (8, 8, Some(4), 1.0, AttentionKind::Full),
            (8, 4, Some(2), 2.0, AttentionKind::Full),
            (6, 3, None, 1.0, AttentionKind::Full),
            (8, 4, Some(2), 1.0, AttentionKind::Linear),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = AttentionConfig {
                channels,
                head_dim,
                norm_groups,
                eps: 1e-5,
                rescale_output_factor: rescale,
                kind,
            };
            let attention = SpatialAttention::new(&vs.root(), &cfg).unwrap();
            let x = Tensor::randn([1, channels, 5, 4], f);
            let _guard = tch::no_grad_guard();
            let ours = attention.forward(&x);
            let reference = attention.forward_libtorch(&x);
            let err = (&ours - &reference).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{channels}/{head_dim}: {err}");
            assert!(ours.is_contiguous(), "NCHW output");
            let batch = Tensor::cat(&[&x, &x], 0);
            assert!(attention.forward(&batch).get(1).allclose(
                &reference.get(0),
                1e-5,
                1e-5,
                false
            ));
        }
    }

    #[test]
    fn rejects_bad_head_dim() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AttentionConfig {
            channels: 8,
            head_dim: 16,
            norm_groups: Some(4),
            eps: 1e-5,
            rescale_output_factor: 1.0,
            kind: AttentionKind::Full,
        };
        let err = SpatialAttention::new(&vs.root(), &cfg).unwrap_err();
        assert!(err.to_string().contains("attention_head_dim = 16"), "{err}");
    }
}
