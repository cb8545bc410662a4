//! Gradient clipping by global norm (Pascanu et al. 2013), as PyTorch's
//! `torch.nn.utils.clip_grad_norm_`.

use std::collections::BTreeMap;

use tch::{Tensor, nn::VarStore};

use super::fused_cpu;

/// Clip the gradients of `vs`'s trainable variables to a global L2 norm of `max_norm`, in place,
/// and return the norm before clipping.
///
/// `‖g‖ = √(Σᵢ ‖gᵢ‖²)` over every defined gradient; when `max_norm / (‖g‖ + 10⁻⁶) < 1` each
/// gradient is multiplied by that factor, computed in f32 as PyTorch's `clip_grad_norm_` does.
/// For dense f32 CPU gradients the sum of squares is accumulated in f64 in one fused pass (more
/// accurate than PyTorch's f32 norm of per-tensor norms; the two can differ in the norm's last
/// bit); otherwise the norm comes from PyTorch's sequence of tensor operations.
///
/// With `max_norm <= 0` or infinite nothing is clipped (the norm is still returned, for
/// logging). A non-finite norm (NaN/inf gradients) is returned as is with the gradients left
/// untouched: the caller decides whether to skip the step. No gradients: returns 0.
pub fn clip_grad_norm(vs: &VarStore, max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let mut grads: Vec<Tensor> = vars
        .values()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    match fused_cpu::sum_of_squares(&grads) {
        Some(sum) => clip_fused(&mut grads, sum, max_norm),
        None => clip_tensor_ops(&mut grads, max_norm),
    }
}

/// The clipping factor `max_norm / (‖g‖ + 10⁻⁶)` in PyTorch's f32 arithmetic:
/// `(total + 1e-6).reciprocal() * max_norm`.
fn clip_coefficient(total: f32, max_norm: f64) -> f32 {
    (total + 1e-6f32).recip() * max_norm as f32
}

/// Clip with the norm from the fused f64 sum of squares.
fn clip_fused(grads: &mut [Tensor], sum_of_squares: f64, max_norm: f64) -> f64 {
    let total = sum_of_squares.sqrt() as f32;
    let norm = f64::from(total);
    if !(norm.is_finite() && max_norm > 0.0 && max_norm.is_finite()) {
        return norm;
    }
    let coef = clip_coefficient(total, max_norm);
    if coef < 1.0 && !fused_cpu::scale(grads, coef) {
        for g in grads.iter_mut() {
            let _ = g.g_mul_scalar_(f64::from(coef));
        }
    }
    norm
}

/// PyTorch's sequence: per-tensor norms (in name order), the norm of those, read once.
fn clip_tensor_ops(grads: &mut [Tensor], max_norm: f64) -> f64 {
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
        for g in grads.iter_mut() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn random_grads() -> Vec<Tensor> {
        tch::manual_seed(11);
        [vec![4099], vec![64, 33, 3, 3], vec![70_001], vec![1]]
            .into_iter()
            .map(|shape| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.01)
            .collect()
    }

    #[test]
    fn fused_and_tensor_op_clipping_agree() {
        let _guard = tch::no_grad_guard();
        for max_norm in [0.5, 1e9] {
            let mut fused = random_grads();
            let mut reference: Vec<Tensor> = fused.iter().map(Tensor::copy).collect();
            let sum = fused_cpu::sum_of_squares(&fused).expect("dense f32 CPU");
            let a = clip_fused(&mut fused, sum, max_norm);
            let b = clip_tensor_ops(&mut reference, max_norm);
            assert!((a - b).abs() <= 1e-6 * b, "norm {a} vs {b}");
            for (x, y) in fused.iter().zip(&reference) {
                let diff = (x - y).abs().max().double_value(&[]);
                let scale = y.abs().max().double_value(&[]);
                assert!(diff <= 1e-6 * scale, "clipped gradients differ by {diff}");
            }
            // Clipped to the limit, or untouched under it.
            let after = fused_cpu::sum_of_squares(&fused).expect("dense").sqrt();
            assert!(
                (after - a.min(max_norm)).abs() <= 1e-5 * a.min(max_norm),
                "{after}"
            );
        }
    }

    #[test]
    fn fused_clipping_leaves_non_finite_gradients_alone() {
        let _guard = tch::no_grad_guard();
        let mut grads = random_grads();
        let _ = grads[1].get(0).get(0).fill_(f64::NAN);
        let before = grads[0].copy();
        let sum = fused_cpu::sum_of_squares(&grads).expect("dense");
        assert!(clip_fused(&mut grads, sum, 1e-3).is_nan());
        assert!(grads[0].equal(&before));
    }
}
