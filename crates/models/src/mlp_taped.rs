//! The MLP's training pass through difflab's kernels ([`difflab_kernels::mlp_tape`]): the
//! forward pass without an autograd graph, and the chain rule written out, for the fused CPU
//! training engine. The network's own forward pass ([`MlpDenoiser::forward`]) is the
//! reference they are tested against.

use difflab_kernels::mlp_tape::{self, GradSquares, MlpLayers, MlpTape};
use tch::Tensor;

use crate::ModelError;
use crate::embeddings::sinusoidal_embedding;
use crate::mlp::{Activation, MlpDenoiser};

impl MlpDenoiser {
    /// The layers as the hand-written pass reads them; `None` for GELU networks (they train
    /// through autograd).
    pub fn taped_layers(&self) -> Option<MlpLayers<'_>> {
        let activation = match self.config.activation {
            Activation::Silu => mlp_tape::Activation::Silu,
            Activation::Relu => mlp_tape::Activation::Relu,
            Activation::Gelu => return None,
        };
        let (time_1, time_2) = self.time_embedding.linears();
        Some(MlpLayers {
            time_1,
            time_2,
            input: &self.input,
            hidden: self
                .layers
                .iter()
                .map(|l| (&l.linear, &l.time_proj))
                .collect(),
            output: &self.output,
            activation,
        })
    }

    /// The prediction for `x` at `t`, as [`MlpDenoiser::try_forward`] computes it (to float
    /// rounding), without an autograd graph: the output and the tape
    /// [`MlpDenoiser::backward`] reads ([`mlp_tape::forward_taped`]). `Ok(None)` where the
    /// hand-written pass does not apply (a GELU network, no BLAS, tensors that are not
    /// contiguous f32 on the CPU): use autograd then. Run it without autocast.
    pub fn forward_taped(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<Option<(Tensor, MlpTape)>, ModelError> {
        let t = self.check(x, t)?;
        let Some(layers) = self.taped_layers() else {
            return Ok(None);
        };
        let code = tch::no_grad(|| {
            sinusoidal_embedding(
                &t,
                self.config.sinusoid_dim(),
                &self.config.time_embedding.sinusoidal(),
            )
        });
        Ok(mlp_tape::forward_taped(&layers, x, &code))
    }

    /// `∂loss/∂θ` into every parameter's `.grad` from `grad_out = ∂loss/∂output` of the pass
    /// that recorded `tape` ([`mlp_tape::backward`]): added with `accumulate`, replacing
    /// whatever `.grad` held without; with `sum_squares`, the weight gradients' sums of squares
    /// for clipping.
    ///
    /// # Panics
    /// For a GELU network (its [`MlpDenoiser::forward_taped`] records no tape).
    pub fn backward(
        &self,
        tape: MlpTape,
        grad_out: &Tensor,
        accumulate: bool,
        sum_squares: bool,
    ) -> GradSquares {
        let layers = self
            .taped_layers()
            .expect("a tape comes from a SiLU or ReLU network");
        mlp_tape::backward(&layers, tape, grad_out, accumulate, sum_squares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::{Activation, MlpConfig};
    use difflab_kernels::cpu::{SUM_BLOCK, squares};
    use tch::{Device, Kind, nn};

    fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, v)| (name, v.grad().copy()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every gradient filled with `value` (NaN: what a pass that overwrites must not read).
    fn fill_grads(vs: &nn::VarStore, value: f64) {
        for (_, v) in vs.variables() {
            let _ = v.grad().fill_(value);
        }
    }

    /// The taped forward and the hand-written gradients equal autograd's to rounding, for SiLU
    /// and ReLU, per-example and shared timesteps, and with gradients accumulated over two
    /// passes (the first overwriting NaN-filled gradients, the second adding); GELU declines
    /// (autograd trains it). The wide case gives every region two or more threads (on a
    /// machine with two cores or more) and a time embedding whose widths differ from the
    /// hidden layers'.
    #[test]
    fn taped_pass_matches_autograd() {
        let narrow = MlpConfig {
            hidden: 32,
            layers: 2,
            ..MlpConfig::default()
        };
        let mut wide = MlpConfig {
            data_dim: 3,
            hidden: 96,
            layers: 3,
            ..MlpConfig::default()
        };
        wide.time_embedding.sinusoid_dim = Some(40);
        wide.time_embedding.dim = Some(80);
        for (base, batch) in [(narrow, 7), (wide, 11)] {
            for (activation, shared_t) in [
                (Activation::Silu, false),
                (Activation::Gelu, false),
                (Activation::Relu, false),
                (Activation::Silu, true),
                (Activation::Relu, true),
            ] {
                let config = MlpConfig {
                    activation,
                    ..base.clone()
                };
                let what = format!(
                    "{activation:?}, hidden {}, shared t {shared_t}",
                    config.hidden
                );
                taped_matches_autograd(&config, batch, shared_t, &what);
            }
        }
    }

    /// One case of [`taped_pass_matches_autograd`].
    fn taped_matches_autograd(config: &MlpConfig, batch: i64, shared_t: bool, what: &str) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = MlpDenoiser::new(&vs.root(), config).expect("mlp");
        let f = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([batch, config.data_dim], f);
        let t = if shared_t {
            Tensor::from_slice(&[417_i64]).expand([batch], false)
        } else {
            Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu))
        };
        let target = Tensor::randn([batch, config.data_dim], f);
        let loss_of = |out: &Tensor| (out - &target).square().mean(Kind::Float);

        for _ in 0..2 {
            loss_of(&mlp.forward(&x, &t)).backward();
        }
        let expected = grads(&vs);
        let autograd_out = mlp.forward(&x, &t).detach();
        fill_grads(&vs, f64::NAN);

        if config.activation == Activation::Gelu {
            assert!(
                mlp.forward_taped(&x, &t).expect("ok").is_none(),
                "GELU declines"
            );
            return;
        }
        for pass in 0..2 {
            let (out, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
            assert!(!out.requires_grad());
            assert!(
                out.allclose(&autograd_out, 1e-5, 1e-6, false),
                "{what}: forward differs"
            );
            let leaf = out.set_requires_grad(true);
            loss_of(&leaf).backward();
            mlp.backward(tape, &leaf.grad(), pass > 0, false);
        }
        for ((name, want), (_, got)) in expected.iter().zip(grads(&vs)) {
            let scale = f64::try_from(want.abs().max()).expect("f64").max(1e-3);
            let diff = f64::try_from((&got - want).abs().max()).expect("f64");
            assert!(
                diff <= 2e-5 * scale,
                "{what}: {name} differs by {diff} (scale {scale})"
            );
        }
    }

    /// A two-layer MLP `hidden` wide, a batch of 9 inputs and timesteps, and an upstream
    /// gradient.
    struct Fixture {
        config: MlpConfig,
        vs: nn::VarStore,
        mlp: MlpDenoiser,
        x: Tensor,
        t: Tensor,
        grad_out: Tensor,
    }

    fn fixture(hidden: i64) -> Fixture {
        let config = MlpConfig {
            hidden,
            layers: 2,
            ..MlpConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = MlpDenoiser::new(&vs.root(), &config).expect("mlp");
        let f = (Kind::Float, Device::Cpu);
        Fixture {
            x: Tensor::randn([9, config.data_dim], f),
            t: Tensor::randint(1000, [9], (Kind::Int64, Device::Cpu)),
            grad_out: Tensor::randn([9, config.data_dim], f),
            config,
            vs,
            mlp,
        }
    }

    /// Overwriting gradients that hold anything (NaN here) gives the bits that adding to zeros
    /// gives, for every parameter.
    #[test]
    fn overwriting_equals_adding_to_zeros() {
        let Fixture {
            config,
            vs,
            mlp,
            x,
            t,
            grad_out,
        } = fixture(64);
        let run = |fill: f64, accumulate: bool| {
            let (_, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
            mlp.taped_layers().expect("silu").ensure_grads();
            fill_grads(&vs, fill);
            mlp.backward(tape, &grad_out, accumulate, false);
            grads(&vs)
        };
        let added = run(0.0, true);
        let overwritten = run(f64::NAN, false);
        assert_eq!(
            added.len(),
            8 + 4 * config.layers,
            "weights and biases of every layer"
        );
        for ((name, want), (_, got)) in added.iter().zip(&overwritten) {
            assert!(
                got.equal(want),
                "{name}: overwriting differs from adding to zeros"
            );
        }
        // And adding really adds: a second pass doubles every gradient (to rounding: the
        // product may be summed into the old value term by term).
        let (_, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
        mlp.backward(tape, &grad_out, true, false);
        for ((name, want), (_, got)) in added.iter().zip(grads(&vs)) {
            assert!(
                got.allclose(&(want * 2.0), 1e-5, 1e-7, false),
                "{name}: not added"
            );
        }
    }

    /// The sums of squares the pass records are, bit for bit, the clipping pass's sums over
    /// the final gradients (after a second, accumulating pass too), for every weight gradient
    /// whose threads' rows start on block boundaries, which at width 256 is all those split by
    /// rows but the input layer's (2 columns).
    #[test]
    fn recorded_squares_are_the_clipping_sums() {
        let Fixture {
            config,
            mlp,
            x,
            t,
            grad_out,
            ..
        } = fixture(256);
        let clipping_sum = |g: &Tensor| -> f64 {
            let v = Vec::<f32>::try_from(g.flatten(0, -1)).expect("f32");
            v.chunks(SUM_BLOCK).map(squares).sum()
        };
        for (accumulate, what) in [(false, "one pass"), (true, "a second, adding pass")] {
            let (_, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
            let recorded = mlp.backward(tape, &grad_out, accumulate, true);
            let layers = mlp.taped_layers().expect("silu");
            let weights: Vec<Tensor> = layers.linears().iter().map(|l| l.ws.grad()).collect();
            let found: Vec<f64> = weights.iter().filter_map(|g| recorded.get(g)).collect();
            // The time MLP's two layers and each hidden layer's two, at least.
            assert!(
                recorded.len() >= 2 + 2 * config.layers,
                "{what}: {}",
                recorded.len()
            );
            assert_eq!(found.len(), recorded.len(), "{what}: only weight gradients");
            for g in &weights {
                if let Some(sq) = recorded.get(g) {
                    assert_eq!(sq.to_bits(), clipping_sum(g).to_bits(), "{what}");
                }
            }
        }
        let (_, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
        assert!(mlp.backward(tape, &grad_out, true, false).is_empty());
    }

    #[test]
    fn gradients_are_created_when_missing() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = MlpDenoiser::new(&vs.root(), &MlpConfig::default()).expect("mlp");
        let x = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1_i64, 2, 3]);
        assert!(vs.variables().values().all(|v| !v.grad().defined()));
        let (out, tape) = mlp.forward_taped(&x, &t).expect("ok").expect("applies");
        mlp.backward(tape, &out.ones_like(), true, false);
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
