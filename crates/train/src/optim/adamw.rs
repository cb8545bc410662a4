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
//! single-tensor `torch.optim.AdamW` / `torch.optim.Adam` (the CPU default), in libtorch's
//! operations: it agrees with PyTorch to the last bit (tested against values PyTorch 2.13
//! computed). With the `kernels` feature, `fused.rs` adds the same update as one pass per
//! parameter through difflab's kernels, for the fused CPU training engine.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Tensor, nn::VarStore};

use difflab_pipeline::checkpoint::{CheckpointError, is_float};
use difflab_pipeline::config::{OptimizerConfig, OptimizerKind};

/// The moments and step count of one parameter.
pub(crate) struct ParamState {
    pub(crate) name: String,
    /// Shares storage with the variable in the `VarStore`.
    pub(crate) var: Tensor,
    pub(crate) exp_avg: Tensor,
    pub(crate) exp_avg_sq: Tensor,
    /// Steps this parameter has taken (it skips steps where its gradient is undefined, as
    /// PyTorch's per-parameter `state["step"]` does).
    pub(crate) step: i64,
}

/// Adam / AdamW (see [`OptimizerKind`]) over a [`VarStore`]'s trainable variables, sorted by
/// name, with moments that [`AdamW::state_tensors`] exposes for checkpoints.
///
/// The optimizer holds handles sharing storage with the store's variables: build it after the
/// model, and load checkpoint weights into the same store (in place) rather than replacing it.
pub struct AdamW {
    pub(crate) config: OptimizerConfig,
    pub(crate) params: Vec<ParamState>,
    pub(crate) steps: i64,
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
        }
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
    /// variable's `.grad()`, in place and without recording gradients, in libtorch's operations
    /// (PyTorch's `AdamW.step()`, the reference of the other two forms: with the `kernels`
    /// feature, `AdamW::step_kernel` is the same update through difflab's one-pass kernel and
    /// `AdamW::step_clip_zero_ema` the training step's whole update stage in one pass).
    /// Variables whose gradient is undefined (never reached by a backward pass) are skipped,
    /// their moments and step count unchanged. Gradients are read, never modified.
    pub fn step(&mut self, lr: f64) {
        self.step_each(|config, p, grad| tensor_step(config, p, grad, lr));
    }

    /// One step of the optimizer without recording gradients: `update(config, parameter,
    /// gradient)` for each variable with a defined gradient, its step count already advanced.
    /// Variables without one are skipped (see [`AdamW::step`]).
    pub(crate) fn step_each(
        &mut self,
        mut update: impl FnMut(&OptimizerConfig, &mut ParamState, Tensor),
    ) {
        let _guard = tch::no_grad_guard();
        let config = self.config.clone();
        self.steps += 1;
        for p in &mut self.params {
            let grad = p.var.grad();
            if !grad.defined() {
                continue;
            }
            p.step += 1;
            update(&config, p, grad);
        }
    }

    /// Zero every optimised variable's gradient (where defined), keeping it allocated.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
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

/// One step of one parameter (its `step` already incremented) with libtorch tensor
/// operations, in the order and with the scalar arithmetic of PyTorch's single-tensor
/// `torch.optim.AdamW` / `torch.optim.Adam`.
pub(crate) fn tensor_step(config: &OptimizerConfig, p: &mut ParamState, mut grad: Tensor, lr: f64) {
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

/// Restore `opt` from `<dir>/optimizer.safetensors` (strict, see
/// [`AdamW::load_state_tensors`]; errors name the file and tensor).
pub fn load_optimizer(opt: &mut AdamW, dir: &Path) -> Result<(), CheckpointError> {
    let (named, file) = difflab_pipeline::checkpoint::read_optimizer(dir)?;
    opt.load_state_from(&named, &file)
}
