//! AdamW, gradient clipping and the EMA through difflab's kernels
//! ([`difflab_kernels::optim`]), for the fused CPU training engine: the same updates as
//! [`AdamW::step`], [`super::clip_grad_norm`] and [`super::Ema::update`], with one pass per
//! parameter instead of five to eight libtorch operations. The moments agree with the
//! libtorch path bit for bit, the parameters to within a few ulp where libtorch's MKL `sqrt`
//! rounds `√v` differently from the IEEE square root (tested below).

use std::collections::HashMap;

use difflab_kernels::mlp_tape::GradSquares;
use difflab_kernels::optim as fused_cpu;
use tch::{Tensor, nn::VarStore};

use super::adamw::tensor_step;
use super::clip::{tensor_clip, trainable_grads};
use super::{AdamW, OptimizerConfig, OptimizerKind};

impl AdamW {
    /// [`AdamW::step`] with dense f32 CPU parameters through difflab's one-pass kernel (the
    /// others through libtorch's operations, as [`AdamW::step`]): the same moments bit for bit,
    /// the parameters to within a few ulp (see the module docs).
    pub fn step_kernel(&mut self, lr: f64) {
        self.step_each(|config, p, grad| {
            let scalars = step_scalars(config, lr, p.step);
            let (var, m, v) = (&p.var, &p.exp_avg, &p.exp_avg_sq);
            if !fused_cpu::adam_step(var, &grad, m, v, scalars, fused_cpu::Extras::NONE) {
                tensor_step(config, p, grad, lr);
            }
        });
    }

    /// The training step's whole update stage: the deferred clipping factor, [`AdamW::step`],
    /// [`AdamW::zero_grad`] and an EMA update in one pass over each parameter where difflab's
    /// kernel takes it (dense f32 CPU tensors laid out alike), instead of three
    /// passes over memory and three parallel regions per parameter: each gradient multiplied by
    /// `grad_scale` first (the factor [`clip_grad_norm_deferred`] left to apply; 1 for
    /// none), zeroed once read with `zero_grad` (without, the gradients are left holding
    /// unspecified values, for a backward pass that overwrites them: the MLP's taped pass,
    /// which so spares this pass a write of every gradient), and with
    /// `ema = Some((shadows, w))` the shadow of the same name moved toward the new weights,
    /// `shadow ← lerp(shadow, θ, w)` (what [`super::Ema::update`] does at a step that averages,
    /// `w = 1 − decay`). The results are those of the separate
    /// calls, bit for bit: a parameter whose shadow is laid out otherwise takes the fused step
    /// without it and then the EMA's own pass, and one the kernel does not take at all goes
    /// through the same three steps one by one (libtorch's operations for the update, as
    /// [`AdamW::step`] would). A parameter without a gradient is not stepped, but its shadow is
    /// averaged.
    ///
    /// # Panics
    /// When `shadows` lacks an optimised variable (the EMA store is checked against the model's
    /// at [`super::Ema::new`]).
    pub fn step_clip_zero_ema(
        &mut self,
        lr: f64,
        grad_scale: f32,
        ema: Option<(&HashMap<String, Tensor>, f64)>,
        zero_grad: bool,
    ) {
        let _guard = tch::no_grad_guard();
        let config = self.config.clone();
        self.steps += 1;
        for p in &mut self.params {
            let shadow = ema.map(|(shadows, weight)| {
                let shadow = shadows.get(&p.name).unwrap_or_else(|| {
                    panic!(
                        "AdamW::step_clip_zero_ema: `{}` missing from the EMA store",
                        p.name
                    )
                });
                (shadow, weight)
            });
            let grad = p.var.grad();
            // Whether the shadow was averaged inside the fused pass.
            let mut averaged = false;
            if grad.defined() {
                p.step += 1;
                let scalars = step_scalars(&config, lr, p.step);
                let extras = fused_cpu::Extras {
                    grad_scale,
                    zero_grad,
                    ema: shadow.map(|(shadow, weight)| (shadow, weight as f32)),
                };
                let (var, m, v) = (&p.var, &p.exp_avg, &p.exp_avg_sq);
                averaged = fused_cpu::adam_step(var, &grad, m, v, scalars, extras);
                // A shadow laid out otherwise: the fused step without it, as `step` takes it.
                let fused = averaged
                    || (extras.ema.is_some()
                        && fused_cpu::adam_step(var, &grad, m, v, scalars, extras.no_ema()));
                if !fused {
                    if grad_scale != 1.0 && !fused_cpu::scale_in_place(&grad, grad_scale) {
                        let _ = grad.shallow_clone().g_mul_scalar_(f64::from(grad_scale));
                    }
                    tensor_step(&config, p, grad.shallow_clone(), lr);
                    if zero_grad && !fused_cpu::zero_in_place(&grad) {
                        p.var.zero_grad();
                    }
                }
            }
            if let (Some((shadow, weight)), false) = (shadow, averaged) {
                lerp_into(shadow, &p.var, weight);
            }
        }
    }

    /// [`AdamW::zero_grad`] with one pass of difflab's fill per dense f32 CPU gradient.
    pub fn zero_grad_kernel(&mut self) {
        for p in &mut self.params {
            if !fused_cpu::zero_in_place(&p.var.grad()) {
                p.var.zero_grad();
            }
        }
    }
}

/// `shadow ← lerp(shadow, var, weight)` in place: one pass of difflab's for f32 CPU weights
/// (bit-identical to `lerp_`, which rounds the weight to f32 for them), else libtorch's.
pub(crate) fn lerp_into(shadow: &Tensor, var: &Tensor, weight: f64) {
    if !fused_cpu::lerp_into(shadow, var, weight as f32) {
        let _ = shadow.shallow_clone().lerp_(var, weight);
    }
}

/// The step's scalars as f32, the way libtorch rounds a double operand of an f32 operation.
fn step_scalars(config: &OptimizerConfig, lr: f64, step: i64) -> fused_cpu::AdamScalars {
    let [beta1, beta2] = config.betas;
    let wd = config.weight_decay;
    let t = step as f64;
    fused_cpu::AdamScalars {
        decay: (wd != 0.0 && config.kind == OptimizerKind::AdamW).then_some((1.0 - lr * wd) as f32),
        l2: (wd != 0.0 && config.kind == OptimizerKind::Adam).then_some(wd as f32),
        one_minus_beta1: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        bias_correction2_sqrt: (1.0 - beta2.powf(t)).powf(0.5) as f32,
        eps: config.eps as f32,
        neg_step_size: (-(lr / (1.0 - beta1.powf(t)))) as f32,
    }
}

/// [`clip_grad_norm`], except that where the gradients are all dense f32 CPU tensors the
/// scaling is left to the caller: returns `(norm, factor)`, `factor` being what each gradient
/// must be multiplied by (1 for none), for an optimizer to apply while it reads the gradients
/// anyway ([`super::AdamW::step_clip_zero_ema`]) instead of a pass of its own. Other gradients are
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, nn};

    /// Two optimizers over identical random parameters, one fused and one on tensor ops, given
    /// the same random gradients for `steps` steps: the moments must agree bit for bit, the
    /// parameters to within a few ulp in under 2 % of their elements.
    fn fused_equals_tensor_ops(config: &OptimizerConfig, shapes: &[&[i64]], steps: usize) {
        tch::manual_seed(7);
        let stores = [
            nn::VarStore::new(Device::Cpu),
            nn::VarStore::new(Device::Cpu),
        ];
        let mut vars: [Vec<Tensor>; 2] = [Vec::new(), Vec::new()];
        for (i, shape) in shapes.iter().enumerate() {
            let init = Tensor::randn(*shape, (Kind::Float, Device::Cpu));
            for (store, vars) in stores.iter().zip(&mut vars) {
                let v = store.root().var_copy(&format!("p{i}"), &init);
                vars.push(v);
            }
        }
        let mut opts = [
            AdamW::new(&stores[0], config),
            AdamW::new(&stores[1], config),
        ];
        for step in 0..steps {
            for (i, shape) in shapes.iter().enumerate() {
                // Gradients spanning many magnitudes, with exact zeros, as real ones do.
                let g = Tensor::randn(*shape, (Kind::Float, Device::Cpu))
                    * Tensor::randn(*shape, (Kind::Float, Device::Cpu)).exp()
                    * Tensor::rand(*shape, (Kind::Float, Device::Cpu)).gt(0.1);
                for vars in &vars {
                    let mut grad = vars[i].grad();
                    if grad.defined() {
                        tch::no_grad(|| grad.copy_(&g));
                    } else {
                        (&vars[i] * &g).sum(Kind::Float).backward();
                    }
                }
            }
            let lr = 1e-3 * (1.0 + step as f64);
            opts[0].step_kernel(lr);
            opts[1].step(lr);
        }
        // Moments and parameters: equal except where MKL's vectorised `sqrt` (the tensor path)
        // and the IEEE square root (the fused kernel) round `√v` differently, which moves
        // those parameters by a few ulp of their update. AdamW's moments never see the
        // parameters, so they must agree bit for bit; Adam's L2 term feeds the parameters
        // back into the gradient, so there they agree to the same tolerance.
        let (a, b) = (opts[0].state_tensors(), opts[1].state_tensors());
        let exact_moments = config.kind == OptimizerKind::AdamW;
        let pairs = a
            .iter()
            .zip(&b)
            .filter(|((_, x), _)| x.kind() == Kind::Float)
            .map(|((name, x), (_, y))| (name.clone(), x, y, exact_moments))
            .chain(
                vars[0]
                    .iter()
                    .zip(&vars[1])
                    .enumerate()
                    .map(|(i, (x, y))| (format!("p{i}"), x, y, false)),
            );
        for (name, x, y, exact) in pairs {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                Vec::try_from(x.flatten(0, -1)).expect("f32"),
                Vec::try_from(y.flatten(0, -1)).expect("f32"),
            );
            let differing = a
                .iter()
                .zip(&b)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let allowed = if exact { 0 } else { a.len().div_ceil(20) };
            assert!(
                differing <= allowed,
                "{name}: {differing} of {} elements differ after {steps} steps",
                a.len()
            );
            for (j, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (a.abs() + 1e-3),
                    "{name}[{j}]: {a} vs {b} after {steps} steps"
                );
            }
        }
    }

    /// `step_clip_zero_ema` (clipping factor, Adam, zeroing and the EMA in one pass) leaves the same
    /// bits as the separate calls it replaces: on f32 tensors (the fused kernel; one of them
    /// channels-last against a contiguous EMA copy, which takes the fused step without the EMA
    /// and then the EMA's own pass), on f64 (the tensor path), and for a variable without a
    /// gradient (not stepped, still averaged).
    #[test]
    fn step_clip_zero_ema_equals_the_separate_calls() {
        let config = OptimizerConfig {
            weight_decay: 0.05,
            ..OptimizerConfig::default()
        };
        let f32_cpu = (Kind::Float, Device::Cpu);
        let channels_last = |t: Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let inits = [
            ("a", Tensor::randn([4099], f32_cpu)),
            ("b", Tensor::randn([70_001], f32_cpu)),
            ("c", channels_last(Tensor::randn([4, 3, 5, 5], f32_cpu))),
            ("d", Tensor::randn([3, 7], (Kind::Double, Device::Cpu))),
            ("e", Tensor::randn([5], f32_cpu)),
        ];
        let build = || {
            let (vs, ema_vs) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
            for (name, init) in &inits {
                let v = vs.root().var_copy(name, init);
                let _ = ema_vs.root().var_copy(name, &(init * 0.5));
                // Give it the layout of `init` (var_copy makes a contiguous copy).
                if *name == "c" {
                    let mut v = v.shallow_clone();
                    tch::no_grad(|| v.set_data(&channels_last(init.copy())));
                }
            }
            let opt = AdamW::new(&vs, &config);
            (vs, ema_vs, opt)
        };
        let [(vs_a, ema_a, mut fused), (vs_b, ema_b, mut separate)] = [build(), build()];
        for step in 0..3 {
            // Upstream gradients from a fixed pattern, the same for both stores (libtorch's
            // global generator is shared with the tests running alongside, so two draws
            // seeded alike need not agree).
            let upstream: Vec<Tensor> = ["a", "b", "c", "d"]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let var = vs_a.variables()[*n].detach();
                    let pattern = Tensor::arange(var.numel() as i64, (var.kind(), Device::Cpu));
                    (pattern * 0.37 + (step * 4 + i) as f64).sin().view_as(&var)
                })
                .collect();
            for vs in [&vs_a, &vs_b] {
                let vars = vs.variables();
                let total = ["a", "b", "c", "d"]
                    .iter()
                    .zip(&upstream)
                    .map(|(n, u)| (&vars[*n] * u).sum(Kind::Double))
                    .reduce(|x, y| x + y)
                    .expect("terms");
                total.backward();
            }
            let (scale, weight) = (0.8_f32, 0.01);
            // The middle step leaves the gradients for an overwriting backward pass; they are
            // zeroed here instead, as that pass would overwrite them.
            let zero = step != 1;
            fused.step_clip_zero_ema(1e-3, scale, Some((&ema_a.variables(), weight)), zero);
            if !zero {
                let left = vs_a.variables()["a"].grad().abs().max().double_value(&[]);
                assert!(left > 0.0, "gradients left in place");
                fused.zero_grad();
            }
            for v in vs_b.variables().values() {
                let g = v.grad();
                if g.defined() {
                    let _ = g.shallow_clone().g_mul_scalar_(f64::from(scale));
                }
            }
            separate.step_kernel(1e-3);
            separate.zero_grad_kernel();
            let shadows = ema_b.variables();
            tch::no_grad(|| {
                for (name, v) in vs_b.variables() {
                    lerp_into(&shadows[&name], &v, weight);
                }
            });
        }
        let bits = |t: &Tensor| -> Vec<u64> {
            let t = t.to_kind(Kind::Double).flatten(0, -1);
            Vec::<f64>::try_from(t)
                .expect("f64")
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        for (name, _) in &inits {
            let (a, b) = (&vs_a.variables()[*name], &vs_b.variables()[*name]);
            assert_eq!(bits(a), bits(b), "{name}: weights");
            assert_eq!(
                bits(&ema_a.variables()[*name]),
                bits(&ema_b.variables()[*name]),
                "{name}: EMA"
            );
            if a.grad().defined() {
                assert_eq!(bits(&a.grad()), bits(&b.grad()), "{name}: zeroed gradient");
                assert_eq!(
                    a.grad().abs().max().double_value(&[]),
                    0.0,
                    "{name}: zeroed"
                );
            }
        }
        assert!(
            !vs_a.variables()["e"].grad().defined(),
            "no gradient for `e`"
        );
        assert_eq!(fused.state_tensors().len(), separate.state_tensors().len());
        for ((name, x), (_, y)) in fused.state_tensors().iter().zip(&separate.state_tensors()) {
            assert_eq!(bits(x), bits(y), "{name}");
        }
    }

    // Odd sizes, a conv kernel, a scalar and a large vector.
    const SHAPES: &[&[i64]] = &[&[4099], &[3, 5], &[64, 33, 3, 3], &[1], &[70_001]];

    #[test]
    fn fused_adamw_matches_tensor_ops() {
        fused_equals_tensor_ops(&OptimizerConfig::default(), SHAPES, 5);
    }

    #[test]
    fn fused_adamw_with_weight_decay_matches_tensor_ops() {
        let config = OptimizerConfig {
            weight_decay: 0.05,
            betas: [0.8, 0.95],
            eps: 1e-6,
            ..OptimizerConfig::default()
        };
        fused_equals_tensor_ops(&config, SHAPES, 5);
    }

    #[test]
    fn fused_adam_with_l2_matches_tensor_ops() {
        let config = OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.1,
            ..OptimizerConfig::default()
        };
        fused_equals_tensor_ops(&config, SHAPES, 5);
    }

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
