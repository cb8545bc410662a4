//! A hand-written backward pass for the [`MlpDenoiser`], for training the small vector models
//! (the 2-D toys) without autograd's bookkeeping.
//!
//! At batch 25 a training step of the 3×256 toy MLP is ~70 libtorch operations whose matrix
//! products are tiny, so recording the autograd graph and walking it back (one node, one
//! saved-tensor set and one dispatch per operation) cost more than the arithmetic. Here the
//! forward pass runs without a graph and keeps just what the backward pass reads (each layer's
//! input and pre-activation); the backward pass is the chain rule written out:
//!
//! for `y = x Wᵀ + b` with upstream gradient `g`: `∂W += gᵀ x`, `∂b += Σ_rows g`,
//! `∂x = g W` (not computed for the network's inputs); for `h = SiLU(z)`:
//! `∂z = ∂h·σ(z)·(1 + z(1 − σ(z)))`; and the time embedding `act(e)`, read by every layer's
//! projection, collects the sum of their gradients.
//!
//! Each matrix product is one call of the BLAS inside libtorch ([`blas::gemm`]), writing into
//! the gradient or output it belongs to, with the accumulation folded in; biases, row sums and
//! SiLU and its derivative are difflab's own loops ([`cpu_kernels`]). Output and gradients agree
//! with autograd's to float rounding (tested): sums run in another order, and SiLU is difflab's
//! kernel (within 4 ulp). GELU and ReLU networks use libtorch's activation kernels.

use tch::{Device, Kind, Tensor, nn};

use crate::embeddings::sinusoidal_embedding;
use crate::mlp::{Activation, MlpDenoiser, MlpLayer};
use crate::{ModelError, blas, cpu_kernels};

/// What [`MlpDenoiser::backward`] reads from a [`MlpDenoiser::forward_taped`] pass.
#[derive(Debug)]
pub struct MlpTape {
    /// The sinusoidal code `[B, S]` (input of the time MLP's first layer).
    code: Tensor,
    /// Pre-activation of the time MLP's first layer.
    time_pre: Tensor,
    /// Its SiLU (input of the time MLP's second layer).
    time_hidden: Tensor,
    /// The time embedding `e` (the time MLP's output).
    emb: Tensor,
    /// `act(e)`, the input of every layer's time projection.
    emb_act: Tensor,
    /// `inputs[0]` is `x`; `inputs[i + 1]` the input of hidden layer `i` (`inputs[1]` the input
    /// projection's output), the last the output layer's input.
    inputs: Vec<Tensor>,
    /// The pre-activation of every hidden layer.
    pre: Vec<Tensor>,
}

impl MlpDenoiser {
    /// The prediction for `x` at `t`, as [`MlpDenoiser::f_forward`] computes it (to float
    /// rounding), but without an autograd graph: returns the output (no grad) and the tape
    /// [`MlpDenoiser::backward`] needs. `Ok(None)` when the hand-written pass does not apply
    /// (parameters or `x` not f32 on the CPU, parameters not contiguous); use autograd then.
    /// Run it without autocast.
    pub fn forward_taped(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<Option<(Tensor, MlpTape)>, ModelError> {
        let t = self.check(x, t)?;
        let f32_cpu = |w: &Tensor| w.kind() == Kind::Float && w.device() == Device::Cpu;
        let usable = |w: &Tensor| f32_cpu(w) && w.is_contiguous();
        let all_params = self
            .linears()
            .iter()
            .all(|l| usable(&l.ws) && l.bs.as_ref().is_none_or(usable));
        if !(f32_cpu(x) && all_params) {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        let act = self.config.activation;
        let te = &self.config.time_embedding;
        let code =
            sinusoidal_embedding(&t, self.config.sinusoid_dim(), &te.sinusoidal()).contiguous();
        let (linear_1, linear_2) = self.time_embedding.linears();
        let time_pre = linear(linear_1, &code);
        let time_hidden = cpu_kernels::silu(&time_pre);
        let emb = linear(linear_2, &time_hidden);
        let emb_act = activation(act, &emb);
        let x = x.contiguous();
        let projected = linear(&self.input, &x);
        let mut inputs = vec![x, projected];
        let mut pre = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let h = inputs.last().expect("the input projection");
            let z = layer_pre_activation(layer, h, &emb_act);
            inputs.push(activation(act, &z));
            pre.push(z);
        }
        let out = linear(&self.output, inputs.last().expect("the last layer"));
        let tape = MlpTape {
            code,
            time_pre,
            time_hidden,
            emb,
            emb_act,
            inputs,
            pre,
        };
        Ok(Some((out, tape)))
    }

    /// Add `∂loss/∂θ` to every parameter's `.grad`, given `grad_out = ∂loss/∂output` for the
    /// forward pass that recorded `tape`: the same gradients `output.backward(grad_out)` would
    /// accumulate through autograd (to float rounding). Gradients that do not exist yet are
    /// created (as zeros, then added to).
    pub fn backward(&self, tape: MlpTape, grad_out: &Tensor) {
        self.ensure_grads();
        let _guard = tch::no_grad_guard();
        let act = self.config.activation;
        let MlpTape {
            code,
            time_pre,
            time_hidden,
            emb,
            emb_act,
            inputs,
            pre,
        } = tape;
        let layers = self.layers.len();
        let grad_out = grad_out.to_kind(Kind::Float).contiguous();
        let mut grad_h = accumulate_linear(&self.output, &inputs[layers + 1], &grad_out, true)
            .expect("asked for");
        // `∂act(e)`, summed over every layer's time projection.
        let grad_emb_act = Tensor::empty(emb_act.size(), (Kind::Float, Device::Cpu));
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let grad_z = activation_backward(act, &grad_h, &pre[i]);
            grad_h =
                accumulate_linear(&layer.linear, &inputs[i + 1], &grad_z, true).expect("asked for");
            // A shared timestep gives `emb_act` one row for the whole batch: its gradient sums.
            let grad_time = if emb_act.size()[0] == 1 && grad_z.size()[0] != 1 {
                column_sums(&grad_z)
            } else {
                grad_z
            };
            accumulate_linear(&layer.time_proj, &emb_act, &grad_time, false);
            let first = i + 1 == layers;
            blas::gemm(
                &grad_emb_act,
                &grad_time,
                false,
                &layer.time_proj.ws,
                false,
                !first,
            );
        }
        accumulate_linear(&self.input, &inputs[0], &grad_h, false);
        let grad_emb = activation_backward(act, &grad_emb_act, &emb);
        let (linear_1, linear_2) = self.time_embedding.linears();
        let grad_hidden =
            accumulate_linear(linear_2, &time_hidden, &grad_emb, true).expect("asked for");
        let grad_pre = cpu_kernels::silu_backward(&grad_hidden, &time_pre);
        accumulate_linear(linear_1, &code, &grad_pre, false);
    }

    /// Every linear layer, in parameter order.
    fn linears(&self) -> Vec<&nn::Linear> {
        let (linear_1, linear_2) = self.time_embedding.linears();
        let mut all = vec![linear_1, linear_2, &self.input];
        for layer in &self.layers {
            all.push(&layer.linear);
            all.push(&layer.time_proj);
        }
        all.push(&self.output);
        all
    }

    /// Give every parameter a `.grad` (zeros) if any lacks one: tch cannot assign a gradient
    /// directly, so one autograd pass of `0·Σθ` creates them all.
    fn ensure_grads(&self) {
        let params: Vec<&Tensor> = self
            .linears()
            .into_iter()
            .flat_map(|l| std::iter::once(&l.ws).chain(l.bs.as_ref()))
            .collect();
        if params.iter().all(|p| p.grad().defined()) {
            return;
        }
        let total = params
            .iter()
            .map(|p| p.sum(Kind::Float))
            .reduce(|a, b| a + b)
            .expect("parameters");
        (total * 0.0).backward();
    }
}

/// A fresh `[rows, cols]` f32 CPU matrix.
fn matrix(rows: i64, cols: i64) -> Tensor {
    Tensor::empty([rows, cols], (Kind::Float, Device::Cpu))
}

/// `x Wᵀ + b` for a contiguous `x`: the bias copied into every row, then the product added
/// by the BLAS (what libtorch's `addmm` does).
fn linear(layer: &nn::Linear, x: &Tensor) -> Tensor {
    let out = matrix(x.size()[0], layer.ws.size()[0]);
    blas::broadcast_rows(&out, &[layer.bs.as_ref()]);
    blas::gemm(&out, x, false, &layer.ws, true, true);
    out
}

/// A hidden layer's `z = h Wᵀ + b + act(e) Pᵀ + c`: both biases in every row, then both
/// products added; with one shared row of `act(e)` its projection is computed once and added
/// to every row like a bias.
fn layer_pre_activation(layer: &MlpLayer, h: &Tensor, emb_act: &Tensor) -> Tensor {
    let z = matrix(h.size()[0], layer.linear.ws.size()[0]);
    if emb_act.size()[0] == 1 && h.size()[0] != 1 {
        let projected = linear(&layer.time_proj, emb_act);
        blas::broadcast_rows(&z, &[layer.linear.bs.as_ref(), Some(&projected)]);
    } else {
        blas::broadcast_rows(&z, &[layer.linear.bs.as_ref(), layer.time_proj.bs.as_ref()]);
        blas::gemm(&z, emb_act, false, &layer.time_proj.ws, true, true);
    }
    blas::gemm(&z, h, false, &layer.linear.ws, true, true);
    z
}

/// `Σ_rows g` of a contiguous matrix, as a `[1, cols]` matrix.
fn column_sums(g: &Tensor) -> Tensor {
    let sums = matrix(1, g.size()[1]);
    let _ = sums.shallow_clone().zero_();
    add_column_sums(&sums, g);
    sums
}

/// `into += Σ_rows g` for a contiguous `g` and a vector `into` of its width; through libtorch
/// when `into` is not a contiguous f32 vector.
fn add_column_sums(into: &Tensor, g: &Tensor) {
    let width = g.size()[1] as usize;
    if !(into.is_contiguous() && into.kind() == Kind::Float && into.numel() == width) {
        let mut into = into.shallow_clone();
        into += g.sum_dim_intlist(0, false, Kind::Float).view_as(&into);
        return;
    }
    // SAFETY: `into` holds `width` contiguous f32 elements, `g` `rows × width` (checked, or
    // made contiguous by the caller); they are distinct tensors.
    let (into, g) = unsafe {
        (
            std::slice::from_raw_parts_mut(into.data_ptr() as *mut f32, width),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, g.numel()),
        )
    };
    for row in g.chunks_exact(width.max(1)) {
        into.iter_mut().zip(row).for_each(|(s, r)| *s += r);
    }
}

/// The activation of a hidden layer: difflab's SiLU kernel, libtorch's GELU and ReLU.
fn activation(act: Activation, z: &Tensor) -> Tensor {
    match act {
        Activation::Silu => cpu_kernels::silu(z),
        Activation::Gelu => z.gelu("none"),
        Activation::Relu => z.relu(),
    }
}

/// `∂z` from `∂h` for `h = act(z)`.
fn activation_backward(act: Activation, grad_h: &Tensor, z: &Tensor) -> Tensor {
    match act {
        Activation::Silu => cpu_kernels::silu_backward(grad_h, z),
        Activation::Gelu => z.gelu_backward(grad_h, "none"),
        Activation::Relu => grad_h * z.gt(0.0).to_kind(grad_h.kind()),
    }
}

/// For `y = x Wᵀ + b` with upstream gradient `g` (contiguous): add `gᵀ x` to `W.grad` and
/// `Σ_rows g` to `b.grad`; returns `∂x = g W` when `input_grad` asks for it.
fn accumulate_linear(
    layer: &nn::Linear,
    x: &Tensor,
    g: &Tensor,
    input_grad: bool,
) -> Option<Tensor> {
    let grad_w = layer.ws.grad();
    if grad_w.is_contiguous() && grad_w.kind() == Kind::Float {
        blas::gemm(&grad_w, g, true, x, false, true);
    } else {
        let _ = grad_w.shallow_clone().addmm_(&g.tr(), x);
    }
    if let Some(bias) = &layer.bs {
        add_column_sums(&bias.grad(), g);
    }
    input_grad.then(|| {
        let dx = matrix(g.size()[0], layer.ws.size()[1]);
        blas::gemm(&dx, g, false, &layer.ws, false, false);
        dx
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::MlpConfig;

    fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, v)| (name, v.grad().copy()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn zero_grads(vs: &nn::VarStore) {
        for (_, mut v) in vs.variables() {
            v.zero_grad();
        }
    }

    /// The taped forward and the hand-written gradients equal autograd's to rounding, for every activation, per-example and shared timesteps,
    /// and with gradients accumulated over two passes.
    #[test]
    fn taped_pass_matches_autograd() {
        for (activation, shared_t) in [
            (Activation::Silu, false),
            (Activation::Gelu, false),
            (Activation::Relu, false),
            (Activation::Silu, true),
        ] {
            tch::manual_seed(3);
            let vs = nn::VarStore::new(Device::Cpu);
            let config = MlpConfig {
                hidden: 32,
                layers: 2,
                activation,
                ..MlpConfig::default()
            };
            let mlp = MlpDenoiser::new(&vs.root(), &config).expect("mlp");
            let f = (Kind::Float, Device::Cpu);
            let x = Tensor::randn([7, 2], f);
            let t = if shared_t {
                Tensor::from_slice(&[417_i64]).expand([7], false)
            } else {
                Tensor::randint(1000, [7], (Kind::Int64, Device::Cpu))
            };
            let target = Tensor::randn([7, 2], f);
            let loss_of = |out: &Tensor| (out - &target).square().mean(Kind::Float);

            for _ in 0..2 {
                loss_of(&mlp.forward(&x, &t)).backward();
            }
            let expected = grads(&vs);
            let autograd_out = mlp.forward(&x, &t).detach();
            zero_grads(&vs);

            for _ in 0..2 {
                let (out, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
                assert!(!out.requires_grad());
                assert!(
                    out.allclose(&autograd_out, 1e-5, 1e-6, false),
                    "{activation:?}: forward differs"
                );
                let leaf = out.set_requires_grad(true);
                loss_of(&leaf).backward();
                mlp.backward(tape, &leaf.grad());
            }
            for ((name, want), (_, got)) in expected.iter().zip(grads(&vs)) {
                let scale = f64::try_from(want.abs().max()).expect("f64").max(1e-3);
                let diff = f64::try_from((&got - want).abs().max()).expect("f64");
                assert!(
                    diff <= 2e-5 * scale,
                    "{activation:?}, shared t {shared_t}: {name} differs by {diff} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn gradients_are_created_when_missing() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = MlpDenoiser::new(&vs.root(), &MlpConfig::default()).expect("mlp");
        let x = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1_i64, 2, 3]);
        assert!(vs.variables().values().all(|v| !v.grad().defined()));
        let (out, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
        mlp.backward(tape, &out.ones_like());
        for (name, v) in vs.variables() {
            assert!(v.grad().defined(), "{name}");
        }
        let bias_grad = vs.variables()["output.bias"].grad();
        assert_eq!(
            Vec::<f32>::try_from(bias_grad).expect("f32"),
            vec![3.0, 3.0]
        );
    }

    #[test]
    fn other_kinds_decline() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = MlpDenoiser::new(&vs.root(), &MlpConfig::default()).expect("mlp");
        let x = Tensor::randn([3, 2], (Kind::Double, Device::Cpu));
        let t = Tensor::from_slice(&[1_i64, 2, 3]);
        assert!(mlp.forward_taped(&x, &t).expect("valid").is_none());
        let bad = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        assert!(mlp.forward_taped(&bad, &t).is_err());
    }
}
