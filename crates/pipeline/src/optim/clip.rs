//! Gradient clipping by global norm (Pascanu et al. 2013), as PyTorch's
//! `torch.nn.utils.clip_grad_norm_`.

use std::collections::BTreeMap;

use difflab_models::GradSquares;
use tch::{Tensor, nn::VarStore};

use super::fused_cpu;

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
/// This is PyTorch's sequence of libtorch operations, for any device and dtype;
/// [`clip_grad_norm_deferred`] is difflab's faster pass for f32 CPU gradients.
pub fn clip_grad_norm(vs: &VarStore, max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads = trainable_grads(vs);
    if grads.is_empty() {
        return 0.0;
    }
    tensor_clip(grads, max_norm)
}

/// [`clip_grad_norm`], except that where the gradients are all dense f32 CPU tensors the
/// scaling is left to the caller: returns `(norm, factor)`, `factor` being what each gradient
/// must be multiplied by (1 for none), for an optimizer to apply while it reads the gradients
/// anyway ([`super::AdamW::step_fused`]) instead of a pass of its own. Other gradients are
/// scaled in place, as [`clip_grad_norm`] does, and the factor is 1.
pub fn clip_grad_norm_deferred(vs: &VarStore, max_norm: f64) -> (f64, f32) {
    clip_grad_norm_deferred_with(vs, max_norm, &GradSquares::default())
}

/// [`clip_grad_norm_deferred`], taking the sums of squares the backward pass already recorded
/// (the MLP's, [`difflab_models::MlpDenoiser::backward`]) instead of reading those gradients
/// again; they have the bits this pass would compute, so the result is the same.
pub fn clip_grad_norm_deferred_with(
    vs: &VarStore,
    max_norm: f64,
    known: &GradSquares,
) -> (f64, f32) {
    let _guard = tch::no_grad_guard();
    clip_deferred(&trainable_grads(vs), max_norm, known)
}

/// [`clip_grad_norm_deferred_with`] of these gradients.
fn clip_deferred(grads: &[Tensor], max_norm: f64, known: &GradSquares) -> (f64, f32) {
    if grads.is_empty() {
        return (0.0, 1.0);
    }
    fused_cpu_clip_factor(grads, max_norm, known).unwrap_or_else(|| {
        let grads = grads.iter().map(Tensor::shallow_clone).collect();
        (tensor_clip(grads, max_norm), 1.0)
    })
}

/// Each gradient multiplied by `factor` in place (dense f32 CPU tensors, which a factor other
/// than 1 implies).
#[cfg(test)]
fn scale_all(grads: &[Tensor], factor: f32) {
    if factor != 1.0 {
        for g in grads {
            fused_cpu::scale_in_place(g, factor);
        }
    }
}

/// The defined gradients of `vs`'s trainable variables, in name order.
fn trainable_grads(vs: &VarStore) -> Vec<Tensor> {
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
fn tensor_clip(mut grads: Vec<Tensor>, max_norm: f64) -> f64 {
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

/// The norm and clipping factor of gradients that are all dense f32 CPU tensors, in difflab's
/// kernels ([`fused_cpu`]): each gradient's sum of squares in f64 over libtorch's threads, its
/// norm rounded to f32 as PyTorch's per-tensor norm is, the total norm of those, then the
/// factor in PyTorch's f32 arithmetic (1 when it would not clip). The norm can differ from
/// PyTorch's f32 reduction in the last bit (it is the more accurate of the two); multiplying
/// by the factor gives the products PyTorch would form. A gradient's sum of squares in `known`
/// is taken from there (see [`clip_grad_norm_deferred_with`]). `None` when a gradient is not
/// a dense f32 CPU tensor (then the tensor path runs).
fn fused_cpu_clip_factor(
    grads: &[Tensor],
    max_norm: f64,
    known: &GradSquares,
) -> Option<(f64, f32)> {
    let mut total_sq = 0.0_f64;
    for g in grads {
        let sq = match known.get(g) {
            Some(sq) => sq,
            None => fused_cpu::sum_of_squares(g)?,
        };
        let per_tensor = (sq.sqrt() as f32) as f64;
        total_sq += per_tensor * per_tensor;
    }
    let total = total_sq.sqrt() as f32;
    let norm = f64::from(total);
    if !(norm.is_finite() && max_norm > 0.0 && max_norm.is_finite()) {
        return Some((norm, 1.0));
    }
    // PyTorch: `(total + 1e-6).reciprocal() * max_norm`, each step in f32.
    let coef = (1.0 / (total + 1e-6_f32)) * max_norm as f32;
    Some((norm, if coef < 1.0 { coef } else { 1.0 }))
}

/// [`fused_cpu_clip_factor`], then the scaling pass over each gradient.
#[cfg(test)]
fn fused_cpu_clip(grads: &[Tensor], max_norm: f64) -> Option<f64> {
    let (norm, factor) = fused_cpu_clip_factor(grads, max_norm, &GradSquares::default())?;
    scale_all(grads, factor);
    Some(norm)
}

/// `torch.linalg.vector_norm(t, 2)` over all elements.
fn vector_norm(t: &Tensor) -> Tensor {
    t.flatten(0, -1)
        .linalg_norm(2.0, None::<&[i64]>, false, None::<tch::Kind>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The fused path and PyTorch's tensor arithmetic agree on the norm to f32 rounding and on
    /// the clipped gradients to an ulp or two, over several tensors (one split over threads).
    #[test]
    fn fused_clip_agrees_with_the_tensor_path() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        for max_norm in [0.5, 1e9] {
            let grads: Vec<Tensor> = [vec![70_001_i64], vec![3, 5], vec![64, 33, 3, 3]]
                .iter()
                .map(|s| Tensor::randn(s, f) * 0.01)
                .collect();
            let copies: Vec<Tensor> = grads.iter().map(Tensor::copy).collect();
            let fused = fused_cpu_clip(&grads, max_norm).expect("dense f32");
            let reference =
                tensor_clip(copies.iter().map(Tensor::shallow_clone).collect(), max_norm);
            assert!(
                (fused - reference).abs() <= 1e-6 * reference,
                "{fused} vs {reference}"
            );
            for (a, b) in grads.iter().zip(&copies) {
                assert!(a.allclose(b, 1e-6, 0.0, false), "max_norm {max_norm}");
            }
            if max_norm > 1.0 {
                let untouched = grads.iter().zip(&copies).all(|(a, b)| a.equal(b));
                assert!(untouched, "under the limit nothing changes");
            }
        }
        let double = vec![Tensor::randn([4], (Kind::Double, Device::Cpu))];
        assert!(
            fused_cpu_clip(&double, 1.0).is_none(),
            "f64 takes the tensor path"
        );
    }
}
