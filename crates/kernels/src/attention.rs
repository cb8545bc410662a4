//! Spatial self-attention of one image at inference with every projection one BLAS call.
//!
//! `q`, `k`, `v` read the normalised map `[C, N]` as its transpose (no token copy), and the
//! output projection is computed transposed, `Wₒ·attnᵀ`, straight into an NCHW output that
//! already holds `x` and the bias (no transposed view, no separate residual addition).

use tch::{Device, Kind, Tensor, nn};

use crate::blas;
use crate::cpu::{is_contiguous_cpu_f32, records_grad};

/// The projections of one attention layer, `heads` heads of `head_dim`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionLayers<'a> {
    /// Query projection `[heads·d, C]`.
    pub to_q: &'a nn::Linear,
    /// Key projection.
    pub to_k: &'a nn::Linear,
    /// Value projection.
    pub to_v: &'a nn::Linear,
    /// Output projection `[C, heads·d]`.
    pub to_out: &'a nn::Linear,
    /// Number of heads.
    pub heads: i64,
    /// Width of a head.
    pub head_dim: i64,
}

/// `x + to_out(attend(q, k, v))` for one image `x` `[1, C, H, W]`, with `q = to_q(n)` etc. on
/// the tokens of `n = normalise(x)`, and `attend` the attention of `[1, heads, N, d]` queries,
/// keys and values. `None` where this does not apply: a batch, autograd recording, other
/// devices, kinds or layouts, a projection without bias, no BLAS.
pub fn one_image(
    layers: AttentionLayers<'_>,
    x: &Tensor,
    normalise: impl FnOnce(&Tensor) -> Tensor,
    attend: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> Option<Tensor> {
    let size = x.size();
    let linears = [layers.to_q, layers.to_k, layers.to_v, layers.to_out];
    let params = linears.iter().flat_map(|l| [Some(&l.ws), l.bs.as_ref()]);
    let applies = size.len() == 4
        && size[0] == 1
        && is_contiguous_cpu_f32(x)
        && params.clone().all(|p| p.is_some_and(is_contiguous_cpu_f32))
        && !records_grad(std::iter::once(x).chain(params.flatten()))
        && blas::direct();
    if !applies {
        return None;
    }
    let (c, n) = (size[1], size[2] * size[3]);
    let (heads, d) = (layers.heads, layers.head_dim);
    let inner = heads * d;
    let normed = normalise(x).contiguous().view([c, n]);
    let project = |layer: &nn::Linear| {
        let out = Tensor::empty([n, inner], (Kind::Float, Device::Cpu));
        blas::broadcast_rows(&out, &[layer.bs.as_ref()]);
        blas::gemm(&out, &normed, true, &layer.ws, true, true);
        out.view([1, n, heads, d]).transpose(1, 2)
    };
    let (q, k, v) = (
        project(layers.to_q),
        project(layers.to_k),
        project(layers.to_v),
    );
    let attended = attend(&q, &k, &v).transpose(1, 2).reshape([n, inner]);
    let out = Tensor::empty([1, c, size[2], size[3]], (Kind::Float, Device::Cpu));
    let out_rows = out.view([c, n]);
    let bias = layers.to_out.bs.as_ref()?;
    blas::broadcast_columns(&out_rows, bias, Some(x));
    blas::gemm(&out_rows, &layers.to_out.ws, false, &attended, true, true);
    Some(out)
}
