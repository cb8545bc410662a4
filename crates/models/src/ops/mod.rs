//! The operations the networks are written in: one seam between their math and the CPU
//! kernels.
//!
//! Every function here is an equation computed by libtorch's operations. When the `kernels`
//! feature is on (the default) and `DIFFLAB_KERNELS` does not switch it off, an input that one
//! of difflab's kernels takes (`difflab_kernels`: batch-1 inference convolutions, fused
//! GroupNorm+SiLU, SiLU, BLAS projections, cached timestep codes) goes there instead, for the
//! same values to float rounding (each kernel is tested against the libtorch expression
//! here). Blocks never call a kernel themselves, so a block reads as its equation and a new
//! kernel is one more branch in this file.

mod conv;

pub use conv::Conv2d;

use tch::{Device, Tensor, nn, nn::Module};

/// Whether difflab's kernels are compiled in and enabled (`DIFFLAB_KERNELS` unset or not
/// `off`).
pub fn kernels_enabled() -> bool {
    #[cfg(feature = "kernels")]
    {
        difflab_kernels::enabled()
    }
    #[cfg(not(feature = "kernels"))]
    {
        false
    }
}

/// `x·σ(x)` (Elfwing et al. 2018).
pub fn silu(x: &Tensor) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        return difflab_kernels::cpu::silu(x);
    }
    x.silu()
}

/// [`silu`] of a fresh tensor nothing else refers to, in place where no autograd record
/// needs the input.
pub fn silu_owned(x: Tensor) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        return difflab_kernels::cpu::silu_owned(x);
    }
    x.silu()
}

/// `x Wᵀ + b`.
pub fn linear(layer: &nn::Linear, x: &Tensor) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled()
        && let Some(y) = difflab_kernels::blas::linear_inference(x, layer)
    {
        return y;
    }
    layer.forward(x)
}

/// `act(x Wᵀ + b + time)`, one hidden layer of the MLP denoiser with its time term `time`
/// (`[B, out]`, or one row `[1, out]` the batch shares) and SiLU (`silu: true`) or another
/// activation `act`.
pub fn linear_act(
    layer: &nn::Linear,
    x: &Tensor,
    time: &Tensor,
    silu: bool,
    act: impl FnOnce(Tensor) -> Tensor,
) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled()
        && silu
        && let Some(y) = difflab_kernels::mlp_layer::silu_layer(layer, x, time)
    {
        return y;
    }
    let _ = silu;
    act(layer.forward(x) + time)
}

/// What a residual block applies per channel around a GroupNorm (`[B or 1, C, 1, 1]` tensors):
/// `GroupNorm(x + offset)·(1 + scale) + shift`, the missing terms dropping out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Modulation<'a> {
    /// Added before the norm (the time embedding, `TimeConditioning::Add`).
    pub offset: Option<&'a Tensor>,
    /// `n·(1 + scale)` after the norm (AdaGN, `TimeConditioning::ScaleShift`).
    pub scale: Option<&'a Tensor>,
    /// Added after the scale (AdaGN).
    pub shift: Option<&'a Tensor>,
}

/// `SiLU(GroupNorm(x + offset)·(1 + scale) + shift)` with `norm`'s groups, affine parameters
/// and epsilon `eps`.
pub fn group_norm_silu(x: &Tensor, norm: &nn::GroupNorm, eps: f64, m: Modulation<'_>) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        let terms = difflab_kernels::group_norm_silu::Modulation {
            offset: m.offset,
            scale: m.scale,
            shift: m.shift,
        };
        if let Some(y) = difflab_kernels::group_norm_silu::group_norm_silu(x, norm, eps, terms) {
            return y;
        }
    }
    let _ = eps; // part of `norm`'s own config on libtorch's path
    let normed = match m.offset {
        Some(offset) => norm.forward(&(x + offset)),
        None => norm.forward(x),
    };
    let scaled = match m.scale {
        Some(scale) => normed * (1.0 + scale),
        None => normed,
    };
    silu_owned(match m.shift {
        Some(shift) => scaled + shift,
        None => scaled,
    })
}

/// `[…, H, W]` → `[…, 2H, 2W]`, every element repeated in a 2×2 block (nearest neighbour).
pub fn upsample_nearest2x(x: &Tensor) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        return difflab_kernels::upsample::upsample_nearest2x(x);
    }
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0)
}

/// The projections of a spatial self-attention layer: `heads` heads of width `head_dim`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionProjections<'a> {
    /// Queries.
    pub to_q: &'a nn::Linear,
    /// Keys.
    pub to_k: &'a nn::Linear,
    /// Values.
    pub to_v: &'a nn::Linear,
    /// Output.
    pub to_out: &'a nn::Linear,
    /// Number of heads.
    pub heads: i64,
    /// Width of a head.
    pub head_dim: i64,
}

/// `x + to_out(attend(q, k, v))` for a feature map `x` `[B, C, H, W]`: the H·W positions of
/// `n = normalise(x)` as tokens, `q = to_q(n)`, `k = to_k(n)`, `v = to_v(n)` split into heads
/// `[B, heads, N, d]`, and `attend` the attention of the heads.
pub fn self_attention(
    p: AttentionProjections<'_>,
    x: &Tensor,
    normalise: impl Fn(&Tensor) -> Tensor,
    attend: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        let layers = difflab_kernels::attention::AttentionLayers {
            to_q: p.to_q,
            to_k: p.to_k,
            to_v: p.to_v,
            to_out: p.to_out,
            heads: p.heads,
            head_dim: p.head_dim,
        };
        if let Some(y) = difflab_kernels::attention::one_image(layers, x, &normalise, &attend) {
            return y;
        }
    }
    self_attention_libtorch(p, x, normalise, attend)
}

/// [`self_attention`] in libtorch's operations whatever the input (the autograd path, and the
/// reference of the tests).
pub fn self_attention_libtorch(
    p: AttentionProjections<'_>,
    x: &Tensor,
    normalise: impl Fn(&Tensor) -> Tensor,
    attend: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> Tensor {
    let (b, c, h, w) = x.size4().expect("self_attention expects [B, C, H, W]");
    let (n, heads, d) = (h * w, p.heads, p.head_dim);
    let tokens = normalise(x).reshape([b, c, n]).transpose(1, 2);
    let split = |t: Tensor| t.reshape([b, n, heads, d]).transpose(1, 2);
    let q = split(p.to_q.forward(&tokens));
    let k = split(p.to_k.forward(&tokens));
    let v = split(p.to_v.forward(&tokens));
    let out = attend(&q, &k, &v)
        .transpose(1, 2)
        .reshape([b, n, heads * d]);
    let out = p.to_out.forward(&out).transpose(1, 2).reshape([b, c, h, w]);
    // `x` first: the sum takes the layout of its first operand, and `out` (a transposed view)
    // is laid out channels-last; with `out + x` every layer after the attention would run on
    // channels-last tensors.
    x + out
}

/// A tensor computed by `make` that depends only on `key`, cached per thread where difflab's
/// kernels are on (the sinusoid's frequencies: five libtorch operations per call otherwise).
pub fn memoized(key: (&'static str, [u64; 4]), make: impl FnOnce() -> Tensor) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled() {
        return difflab_kernels::memo::memoized(key, make);
    }
    let _ = key;
    make()
}

/// A number for a device, for [`memoized`] keys.
pub fn device_code(device: Device) -> u64 {
    match device {
        Device::Cpu => 0,
        Device::Cuda(i) => 1 + i as u64,
        Device::Mps => u64::MAX - 1,
        Device::Vulkan => u64::MAX,
    }
}

/// `code(t)` for integer timesteps `t` on the CPU, where `code(all)` of every timestep
/// `0..rows` gives, row for row, the bits `code` gives each alone: copied from a per-thread
/// table where difflab's kernels are on, else `code(t)`.
pub fn tabulated(
    t: &Tensor,
    key: (&'static str, [u64; 4]),
    width: i64,
    code: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    #[cfg(feature = "kernels")]
    if kernels_enabled()
        && let Some(rows) = difflab_kernels::memo::tabulated(t, key, width, &code)
    {
        return rows;
    }
    let _ = (key, width);
    code(t)
}
