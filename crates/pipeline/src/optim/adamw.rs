//! Adam (Kingma & Ba 2015, Algorithm 1) and AdamW (Loshchilov & Hutter 2019, Algorithm 2)
//! over the trainable variables of a [`VarStore`], with the moments as plain tensors so that a
//! checkpoint can hold them.
//!
//! One step for a parameter `θ` with gradient `g`, at its step count `t` (1 on the first step):
//!
//! ```text
//! adamw:  θ ← θ·(1 − lr·λ)                       (decoupled weight decay)
//! adam:   g ← g + λ·θ                            (L2 penalty folded into the gradient)
//! m ← β₁·m + (1 − β₁)·g                          (as m.lerp(g, 1 − β₁))
//! v ← β₂·v + (1 − β₂)·g²
//! θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! The operations, their order and their scalar arithmetic are those of PyTorch's
//! single-tensor `torch.optim.AdamW` / `torch.optim.Adam` (the CPU default). The libtorch
//! tensor-op path (taken on CUDA and for f64/bf16) agrees with PyTorch to the last bit (tested
//! against values PyTorch 2.13 computed). Dense f32 CPU parameters take one fused Rust pass per
//! parameter (`fused_cpu.rs`): the same arithmetic, bit-identical moments, and parameters within
//! a few ulp where libtorch's MKL `sqrt` rounds differently from the IEEE square root (the
//! PyTorch reference values above are reproduced exactly by both paths).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn::VarStore};

use super::fused_cpu;
use crate::checkpoint::CheckpointError;

/// Which update rule [`AdamW`] applies; they differ only in how `weight_decay` acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// AdamW: weight decay applied to the weights, decoupled from the gradient statistics,
    /// `θ ← θ·(1 − lr·λ)` (Loshchilov & Hutter 2019). `torch.optim.AdamW`.
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    /// Adam: weight decay as an L2 penalty added to the gradient, `g ← g + λ·θ`, which then
    /// passes through the moment estimates (Kingma & Ba 2015). `torch.optim.Adam`. With
    /// `weight_decay: 0` (the default) both kinds give identical updates.
    #[serde(rename = "adam")]
    Adam,
}

/// The `optimizer:` section: Adam/AdamW hyper-parameters. `lr` is the base rate that the
/// schedule ([`crate::optim::LrConfig`]) scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `adamw` (default) or `adam`.
    pub kind: OptimizerKind,
    /// Base learning rate (default `2e-4`, the DDPM CIFAR-10 rate of Ho et al. 2020).
    pub lr: f64,
    /// `[β₁, β₂]`, the decay rates of the first and second moment estimates (default
    /// `[0.9, 0.999]`).
    pub betas: [f64; 2],
    /// `ε` added to `√v̂` in the denominator (default `1e-8`).
    pub eps: f64,
    /// Weight decay `λ` (default `0.0`): decoupled for `adamw`, L2 for `adam`.
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: 2e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Range checks; the message names the key (`optimizer.<key>`) and value.
    pub fn validate(&self) -> Result<(), String> {
        use super::invalid;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("optimizer.lr", self.lr, "must be > 0");
        }
        for (i, beta) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(beta) {
                return invalid(&format!("optimizer.betas[{i}]"), beta, "must be in [0, 1)");
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return invalid("optimizer.eps", self.eps, "must be > 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid("optimizer.weight_decay", self.weight_decay, "must be >= 0");
        }
        Ok(())
    }
}

/// The moments and step count of one parameter.
struct ParamState {
    name: String,
    /// Shares storage with the variable in the `VarStore`.
    var: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps this parameter has taken (it skips steps where its gradient is undefined, as
    /// PyTorch's per-parameter `state["step"]` does).
    step: i64,
}

/// Adam / AdamW (see [`OptimizerKind`]) over a [`VarStore`]'s trainable variables, sorted by
/// name, with moments that [`AdamW::state_tensors`] exposes for checkpoints.
///
/// The optimizer holds handles sharing storage with the store's variables: build it after the
/// model, and load checkpoint weights into the same store (in place) rather than replacing it.
pub struct AdamW {
    config: OptimizerConfig,
    params: Vec<ParamState>,
    steps: i64,
    /// Whether dense f32 CPU parameters take difflab's fused pass (`fused_cpu.rs`) rather than
    /// libtorch's operations.
    kernels: bool,
}

/// Where an error found in in-memory state (not a file) says it was found.
const IN_MEMORY: &str = "<optimizer state>";

impl AdamW {
    /// An optimizer over every trainable variable of `vs` (those with `requires_grad`), with
    /// zero moments and zero steps.
    pub fn new(vs: &VarStore, config: &OptimizerConfig) -> Self {
        let _guard = tch::no_grad_guard();
        let vars: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let params = vars
            .into_iter()
            .map(|(name, var)| ParamState {
                exp_avg: var.zeros_like().detach(),
                exp_avg_sq: var.zeros_like().detach(),
                name,
                var,
                step: 0,
            })
            .collect();
        Self {
            config: config.clone(),
            params,
            steps: 0,
            kernels: true,
        }
    }

    /// This optimizer stepping in libtorch's operations only (PyTorch's single-tensor
    /// sequence), never difflab's fused pass.
    pub fn without_kernels(mut self) -> Self {
        self.kernels = false;
        self
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Names of the optimised variables, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// One update with learning rate `lr` (the schedule's value for this step) from each
    /// variable's `.grad()`, in place and without recording gradients. Variables whose gradient
    /// is undefined (never reached by a backward pass) are skipped, their moments and step
    /// count unchanged. Gradients are read, never modified.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        let config = self.config.clone();
        self.steps += 1;
        for p in &mut self.params {
            let grad = p.var.grad();
            if !grad.defined() {
                continue;
            }
            p.step += 1;
            let scalars = step_scalars(&config, lr, p.step);
            let fused = self.kernels
                && fused_cpu::adam_step(
                    &p.var,
                    &grad,
                    &p.exp_avg,
                    &p.exp_avg_sq,
                    scalars,
                    fused_cpu::Extras::NONE,
                );
            if !fused {
                tensor_step(&config, p, grad, lr);
            }
        }
    }

    /// [`AdamW::step`], [`AdamW::zero_grad`] and an EMA update in one pass over each parameter
    /// where difflab's kernel takes it (dense f32 CPU tensors laid out alike), instead of three
    /// passes over memory and three parallel regions per parameter: each gradient multiplied by
    /// `grad_scale` first (the factor [`super::clip_grad_norm_deferred`] left to apply; 1 for
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
    pub fn step_fused(
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
                    panic!("AdamW::step_fused: `{}` missing from the EMA store", p.name)
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
                super::ema::average_into(shadow, &p.var, weight, true);
            }
        }
    }

    /// Zero every optimised variable's gradient (where defined), keeping it allocated.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            // One pass of difflab's fill for a dense f32 CPU gradient, else libtorch's.
            if !(self.kernels && fused_cpu::zero_in_place(&p.var.grad())) {
                p.var.zero_grad();
            }
        }
    }

    /// Number of [`AdamW::step`] calls so far (restored by [`AdamW::load_state_tensors`]).
    pub fn steps_taken(&self) -> i64 {
        self.steps
    }

    /// The optimizer state as named tensors, sharing storage with the optimizer (copy before
    /// mutating): `exp_avg.<var>` and `exp_avg_sq.<var>` (shaped like the variable),
    /// `step.<var>` (the variable's own step count) and `step` (calls to [`AdamW::step`]); the
    /// counts are 1-element int64 tensors.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len() + 1);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            out.push((format!("step.{}", p.name), Tensor::from_slice(&[p.step])));
        }
        out.push(("step".to_string(), Tensor::from_slice(&[self.steps])));
        out
    }

    /// Restore the state that [`AdamW::state_tensors`] produced. Strict: every expected name
    /// must be present with the variable's shape and no other name may appear; the error names
    /// the tensor. Nothing is changed unless everything matches. Moments are copied in place
    /// (converted to the variable's dtype and device).
    pub fn load_state_tensors(
        &mut self,
        named: &[(String, Tensor)],
    ) -> Result<(), CheckpointError> {
        self.load_state_from(named, Path::new(IN_MEMORY))
    }

    /// [`AdamW::load_state_tensors`], with errors naming `file`.
    pub(crate) fn load_state_from(
        &mut self,
        named: &[(String, Tensor)],
        file: &Path,
    ) -> Result<(), CheckpointError> {
        let mismatch = |tensor: &str, reason: String| CheckpointError::Mismatch {
            file: file.to_path_buf(),
            tensor: tensor.to_string(),
            reason,
        };
        let mut given: BTreeMap<&str, &Tensor> = BTreeMap::new();
        for (name, tensor) in named {
            if given.insert(name.as_str(), tensor).is_some() {
                return Err(mismatch(name, "appears twice".into()));
            }
        }
        let count = |name: &str| -> Result<i64, CheckpointError> {
            let tensor = given
                .get(name)
                .ok_or_else(|| mismatch(name, "missing".into()))?;
            read_count(tensor).map_err(|reason| mismatch(name, reason))
        };
        let steps = count("step")?;
        let mut staged = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut moments = [None, None];
            for (slot, prefix) in ["exp_avg", "exp_avg_sq"].into_iter().enumerate() {
                let name = format!("{prefix}.{}", p.name);
                let tensor = given.get(name.as_str()).ok_or_else(|| {
                    mismatch(
                        &name,
                        format!(
                            "missing (the model has parameter `{}` {:?}; checkpoint from another model config?)",
                            p.name,
                            p.var.size()
                        ),
                    )
                })?;
                if tensor.size() != p.var.size() {
                    return Err(mismatch(
                        &name,
                        format!(
                            "shape {:?}, parameter `{}` has {:?} (checkpoint from another model config?)",
                            tensor.size(),
                            p.name,
                            p.var.size()
                        ),
                    ));
                }
                if !is_float(tensor.kind()) {
                    return Err(mismatch(
                        &name,
                        format!("dtype {:?}, expected floating point", tensor.kind()),
                    ));
                }
                moments[slot] = Some(*tensor);
            }
            let step = count(&format!("step.{}", p.name))?;
            staged.push((moments, step));
        }
        let known: std::collections::BTreeSet<String> = self
            .state_tensors()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if let Some(extra) = given.keys().find(|name| !known.contains(**name)) {
            return Err(mismatch(
                extra,
                "unexpected: the model has no such parameter (checkpoint from another model config?)".into(),
            ));
        }
        let _guard = tch::no_grad_guard();
        for (p, ([exp_avg, exp_avg_sq], step)) in self.params.iter_mut().zip(staged) {
            let (Some(exp_avg), Some(exp_avg_sq)) = (exp_avg, exp_avg_sq) else {
                unreachable!("both moments staged above");
            };
            p.exp_avg
                .f_copy_(exp_avg)
                .map_err(|e| mismatch(&format!("exp_avg.{}", p.name), e.to_string()))?;
            p.exp_avg_sq
                .f_copy_(exp_avg_sq)
                .map_err(|e| mismatch(&format!("exp_avg_sq.{}", p.name), e.to_string()))?;
            p.step = step;
        }
        self.steps = steps;
        Ok(())
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

/// One step of one parameter (its `step` already incremented) with libtorch tensor
/// operations, in the order and with the scalar arithmetic of PyTorch's single-tensor
/// `torch.optim.AdamW` / `torch.optim.Adam`.
fn tensor_step(config: &OptimizerConfig, p: &mut ParamState, mut grad: Tensor, lr: f64) {
    let OptimizerConfig {
        kind,
        betas: [beta1, beta2],
        eps,
        weight_decay,
        ..
    } = *config;
    if weight_decay != 0.0 {
        match kind {
            OptimizerKind::AdamW => {
                let _ = p.var.g_mul_scalar_(1.0 - lr * weight_decay);
            }
            OptimizerKind::Adam => {
                // PyTorch's `grad.add(param, alpha=λ)`, one fused multiply-add.
                let lambda = Tensor::scalar_tensor(weight_decay, (p.var.kind(), p.var.device()));
                grad = grad.addcmul(&p.var, &lambda);
            }
        }
    }
    let _ = p.exp_avg.lerp_(&grad, 1.0 - beta1);
    // `v.mul_(β₂).addcmul_(g, g, value=1 − β₂)`: that kernel computes `v + (c·g)·g`.
    let _ = p
        .exp_avg_sq
        .g_mul_scalar_(beta2)
        .addcmul_(&(&grad * (1.0 - beta2)), &grad);
    let t = p.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = lr / bias_correction1;
    let denom = p.exp_avg_sq.sqrt() / bias_correction2.powf(0.5) + eps;
    // `θ.addcdiv_(m, denom, value=−step_size)`: that kernel computes `θ + (c·m)/denom`.
    let _ = p.var.addcdiv_(&(&p.exp_avg * -step_size), &denom);
}

/// A step count stored as a 0-d or 1-element tensor (int64, or a float holding an integer as
/// PyTorch stores `state["step"]`).
fn read_count(tensor: &Tensor) -> Result<i64, String> {
    if tensor.numel() != 1 {
        return Err(format!(
            "expected one element, found shape {:?}",
            tensor.size()
        ));
    }
    let flat = tensor.reshape([1]);
    let value = if is_float(tensor.kind()) {
        let v = flat.double_value(&[0]);
        if !(v >= 0.0 && v.fract() == 0.0 && v < 9.0e15) {
            return Err(format!("expected a non-negative integer count, found {v}"));
        }
        v as i64
    } else {
        flat.int64_value(&[0])
    };
    if value < 0 {
        return Err(format!("expected a non-negative count, found {value}"));
    }
    Ok(value)
}

/// Whether `kind` is a floating-point dtype.
pub(crate) fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

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
            AdamW::new(&stores[1], config).without_kernels(),
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
            opts[0].step(lr);
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

    /// `step_fused` (clipping factor, Adam, zeroing and the EMA in one pass) leaves the same
    /// bits as the separate calls it replaces: on f32 tensors (the fused kernel; one of them
    /// channels-last against a contiguous EMA copy, which takes the fused step without the EMA
    /// and then the EMA's own pass), on f64 (the tensor path), and for a variable without a
    /// gradient (not stepped, still averaged).
    #[test]
    fn step_fused_equals_the_separate_calls() {
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
            fused.step_fused(1e-3, scale, Some((&ema_a.variables(), weight)), zero);
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
            separate.step(1e-3);
            separate.zero_grad();
            let shadows = ema_b.variables();
            tch::no_grad(|| {
                for (name, v) in vs_b.variables() {
                    super::super::ema::average_into(&shadows[&name], &v, weight, true);
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
}
