//! The mean regression loss of a batch and its gradient with respect to the prediction in one
//! pass, for a network that backpropagates by hand (the MLP's taped pass).

use tch::{Kind, Tensor};

use crate::cpu::is_contiguous_cpu_f32;

/// `L = (1/B) Σ_i w_i · mean_j ℓ(pred_ij − target_ij)` (`ℓ` squared with `squared`, else
/// absolute; `w_i = 1` without `weights` `[B]`) and `∂(scale·L)/∂pred`, in one pass over
/// contiguous f32 CPU tensors that do not record gradients (the sums in f64, so `L` can differ
/// from libtorch's reduction in its last bit); `None` for anything else.
pub fn regression_value_and_grad(
    pred: &Tensor,
    target: &Tensor,
    weights: Option<&Tensor>,
    squared: bool,
    scale: f64,
) -> Option<(Tensor, Tensor)> {
    let applies = is_contiguous_cpu_f32(pred)
        && is_contiguous_cpu_f32(target)
        && !pred.requires_grad()
        && !target.requires_grad()
        && pred.size() == target.size()
        && pred.dim() >= 1;
    let (n, batch) = (
        pred.numel(),
        pred.size().first().copied().unwrap_or(0) as usize,
    );
    if !applies || n == 0 || batch == 0 {
        return None;
    }
    let weights: Option<Vec<f32>> = match weights {
        Some(w) if w.numel() == batch => {
            Some(Vec::<f32>::try_from(w.detach().to_kind(Kind::Float).reshape([-1])).ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    let per_sample = n / batch;
    let grad = pred.empty_like();
    // SAFETY: `pred` and `target` are contiguous f32 CPU tensors of `n` elements (checked),
    // `grad` a fresh one of the same shape; the slices live only in this function.
    let (p, y, g) = unsafe {
        (
            std::slice::from_raw_parts(pred.data_ptr() as *const f32, n),
            std::slice::from_raw_parts(target.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(grad.data_ptr() as *mut f32, n),
        )
    };
    let per_element = (scale / n as f64) as f32;
    let mut total = 0.0_f64;
    for (i, ((p, y), g)) in p
        .chunks_exact(per_sample)
        .zip(y.chunks_exact(per_sample))
        .zip(g.chunks_exact_mut(per_sample))
        .enumerate()
    {
        let w = weights.as_ref().map_or(1.0, |w| w[i]);
        let mut sum = 0.0_f64;
        for ((&p, &y), g) in p.iter().zip(y).zip(g) {
            let d = p - y;
            match squared {
                true => {
                    sum += f64::from(d * d);
                    *g = d * (2.0 * per_element) * w;
                }
                false => {
                    sum += f64::from(d.abs());
                    // `sign(d)`: 0 where the prediction is exact, as autograd's.
                    let sign = if d > 0.0 {
                        1.0
                    } else if d < 0.0 {
                        -1.0
                    } else {
                        d
                    };
                    *g = sign * per_element * w;
                }
            }
        }
        total += f64::from(w) * sum / per_sample as f64;
    }
    let value = Tensor::from((total / batch as f64) as f32);
    Some((value, grad))
}
