//! Gradient clipping by global norm (Pascanu et al. 2013), as PyTorch's
//! `torch.nn.utils.clip_grad_norm_`.

use std::collections::BTreeMap;

use tch::{Tensor, nn::VarStore};

/// Clip the gradients of `vs`'s trainable variables to a global L2 norm of `max_norm`, in place,
/// and return the norm before clipping.
///
/// `‖g‖ = √(Σᵢ ‖gᵢ‖²)` over every defined gradient (per-tensor norms, then the norm of those,
/// in name order); when `max_norm / (‖g‖ + 10⁻⁶) < 1` each gradient is multiplied by that
/// factor — PyTorch's arithmetic, so the result matches `clip_grad_norm_`.
///
/// With `max_norm <= 0` or infinite nothing is clipped (the norm is still returned, for
/// logging). A non-finite norm (NaN/inf gradients) is returned as is with the gradients left
/// untouched: the caller decides whether to skip the step. No gradients: returns 0.
///
/// This is PyTorch's sequence of libtorch operations, for any device and dtype (the fused CPU
/// engine sums the norm in difflab's kernels instead).
pub fn clip_grad_norm(vs: &VarStore, max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads = trainable_grads(vs);
    if grads.is_empty() {
        return 0.0;
    }
    tensor_clip(grads, max_norm)
}

/// The defined gradients of `vs`'s trainable variables, in name order.
pub(crate) fn trainable_grads(vs: &VarStore) -> Vec<Tensor> {
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.values()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect()
}

/// [`clip_grad_norm`] in libtorch operations, exactly as PyTorch's `clip_grad_norm_` (any
/// device and dtype); `grads` is not empty.
pub(crate) fn tensor_clip(mut grads: Vec<Tensor>, max_norm: f64) -> f64 {
    let kind = grads[0].kind();
    let norms: Vec<Tensor> = grads.iter().map(|g| vector_norm(g).to_kind(kind)).collect();
    let total = vector_norm(&Tensor::stack(&norms, 0));
    let norm = total.double_value(&[]);
    if !(norm.is_finite() && max_norm > 0.0 && max_norm.is_finite()) {
        return norm;
    }
    // `max_norm / (total + 1e-6)` in PyTorch is `(total + 1e-6).reciprocal() * max_norm`.
    let coef = (&total + 1e-6).reciprocal() * max_norm;
    if coef.double_value(&[]) < 1.0 {
        for g in &mut grads {
            let _ = g.g_mul_(&coef);
        }
    }
    norm
}

/// `torch.linalg.vector_norm(t, 2)` over all elements.
fn vector_norm(t: &Tensor) -> Tensor {
    t.flatten(0, -1)
        .linalg_norm(2.0, None::<&[i64]>, false, None::<tch::Kind>)
}
