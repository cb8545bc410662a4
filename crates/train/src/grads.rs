//! What the parameters' gradients hold between optimizer steps.
//!
//! PyTorch's `zero_grad(set_to_none=True)` drops the gradients after a step so that the next
//! backward pass writes fresh ones instead of adding to zeros. tch cannot drop a `.grad`, but
//! the MLP's taped backward pass can overwrite one ([`difflab_models::MlpDenoiser::backward`]),
//! so for a taped network the update leaves the gradients as they are and skips its write of
//! zeros into every one of them, which on the 2-D toy is a tenth of the update pass's memory
//! traffic. Autograd only ever adds, so for every other network the update zeroes them, as
//! before.

use difflab_models::GradSquares;

use crate::optim::AdamW;
use difflab_pipeline::Network;

use super::engine::Loss;

/// Tracks whether the parameters' `.grad` hold the last applied step's values (left there for
/// an overwriting backward pass) or this step's sums so far, and so whether the next backward
/// pass overwrites, adds, or needs them zeroed first. One per training loop.
#[derive(Debug, Default)]
pub(crate) struct GradBuffers {
    /// The gradients hold what the last update left: the next backward pass must not add to
    /// them.
    stale: bool,
    /// The last backward pass was the MLP's taped one, which can overwrite.
    taped: bool,
}

impl GradBuffers {
    /// Backpropagate one micro-batch's `loss` divided by `divisor` into the gradients: the
    /// taped MLP overwrites stale gradients and adds to current ones; autograd adds, after
    /// `optimizer` zeroed stale ones. With `last` (the step's last micro-batch) returns what
    /// the taped pass recorded of the gradients' sums of squares, for clipping.
    pub(crate) fn backward(
        &mut self,
        loss: Loss,
        network: &Network,
        divisor: f64,
        optimizer: &mut AdamW,
        last: bool,
    ) -> GradSquares {
        self.taped = loss.taped.is_some();
        let overwrite = self.stale && self.taped;
        if self.stale && !self.taped {
            optimizer.zero_grad();
        }
        let squares = backward(loss, network, divisor, !overwrite, last);
        self.stale = false;
        squares
    }

    /// Whether the update after this step's backward passes must zero the gradients: not when
    /// the network's backward pass overwrites them.
    pub(crate) fn zero_in_update(&self) -> bool {
        !self.taped
    }

    /// Record an update that zeroed the gradients as [`GradBuffers::zero_in_update`] said.
    pub(crate) fn updated(&mut self) {
        self.stale = self.taped;
    }

    /// Zero the gradients now (a step skipped for a non-finite loss or norm): whatever the
    /// backward passes added is dropped.
    pub(crate) fn discard(&mut self, optimizer: &mut AdamW) {
        optimizer.zero_grad();
        self.stale = false;
    }
}

/// Backpropagate `loss / divisor` into the network's gradients: the MLP's hand-written pass
/// from the loss's written-out output gradient when the forward pass was taped (adding to the
/// gradients with `accumulate`, replacing them without), autograd otherwise (which always
/// adds: `accumulate` must be set). With `sum_squares` the taped pass also returns the
/// gradients' sums of squares for clipping (empty otherwise; see
/// [`difflab_models::GradSquares`]).
fn backward(
    loss: Loss,
    network: &Network,
    divisor: f64,
    accumulate: bool,
    sum_squares: bool,
) -> GradSquares {
    match (loss.taped, network) {
        (Some((grad, tape)), Network::Mlp(mlp)) if divisor == 1.0 => {
            mlp.backward(tape, &grad, accumulate, sum_squares)
        }
        (Some((grad, tape)), Network::Mlp(mlp)) => {
            mlp.backward(tape, &(grad / divisor), accumulate, sum_squares)
        }
        (Some(_), _) => unreachable!("only the MLP records a tape"),
        (None, _) if !accumulate => {
            panic!("autograd adds to the gradients: zero them first (GradBuffers)")
        }
        (None, _) if divisor == 1.0 => {
            loss.value.backward();
            GradSquares::default()
        }
        (None, _) => {
            (loss.value / divisor).backward();
            GradSquares::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::ToyStep;
    use crate::optim::{OptimizerConfig, clip_grad_norm_deferred, clip_grad_norm_deferred_with};

    /// Stale gradients (what an update left for the taped MLP) are overwritten by its next
    /// backward pass and added to by the micro-batches after it; before an autograd pass they
    /// are zeroed. Each gives the bits of the same passes into zeroed gradients.
    #[test]
    fn stale_gradients_are_overwritten_or_zeroed_first() {
        let toy = ToyStep::new();
        let (vs, network) = (&toy.vs, &toy.network);
        let Network::Mlp(mlp) = network else {
            panic!("an MLP")
        };
        let taped_loss = |seed: i64| {
            let loss = toy.loss(seed);
            assert!(loss.taped.is_some());
            loss
        };
        let (x, t) = (
            Tensor::from_slice(&[0.3_f32, -1.0, 2.0, 0.5]).view([2, 2]),
            Tensor::from_slice(&[7_i64, 420]),
        );
        let autograd_loss = || Loss {
            value: mlp.forward(&x, &t).square().mean(Kind::Float),
            taped: None,
        };
        let grads = || toy.grads();
        let assert_same = |got: &[(String, Tensor)], want: &[(String, Tensor)], what: &str| {
            assert_eq!(
                got.len(),
                16,
                "every weight and bias of the 8 linear layers"
            );
            for ((name, g), (_, w)) in got.iter().zip(want) {
                assert!(g.equal(w), "{what}: {name}");
            }
        };
        let mut optimizer = AdamW::new(vs, &OptimizerConfig::default());

        // Into zeroed gradients: seed 11, then seed 11 and 12 added (two micro-batches), and
        // the autograd pass.
        let mut fresh = GradBuffers::default();
        let none = fresh.backward(taped_loss(11), network, 2.0, &mut optimizer, false);
        assert!(none.is_empty(), "sums only for the last micro-batch");
        let one = grads();
        let squares = fresh.backward(taped_loss(12), network, 2.0, &mut optimizer, true);
        let two = grads();
        // The last micro-batch's sums give the clipping pass's own norm and factor, bit for bit.
        assert_eq!(
            squares.len(),
            7,
            "the weight gradients split by rows (all on one thread at this width): all but the \
             output layer's"
        );
        let (with, without) = (
            clip_grad_norm_deferred_with(vs, 0.01, &squares),
            clip_grad_norm_deferred(vs, 0.01),
        );
        assert_eq!(
            (with.0.to_bits(), with.1.to_bits()),
            (without.0.to_bits(), without.1.to_bits())
        );
        assert!(with.1 < 1.0, "a factor that clips");
        fresh.discard(&mut optimizer);
        let none = fresh.backward(autograd_loss(), network, 1.0, &mut optimizer, true);
        assert!(none.is_empty(), "autograd records none");
        let autograd = grads();

        // A step's passes, an update that leaves the gradients (the taped MLP's), then the
        // same two micro-batches: the first overwrites, the second adds.
        let mut buffers = GradBuffers::default();
        buffers.backward(taped_loss(5), network, 1.0, &mut optimizer, true);
        assert!(
            !buffers.zero_in_update(),
            "the taped MLP's update leaves them"
        );
        buffers.updated();
        buffers.backward(taped_loss(11), network, 2.0, &mut optimizer, false);
        assert_same(&grads(), &one, "overwritten");
        buffers.backward(taped_loss(12), network, 2.0, &mut optimizer, true);
        assert_same(&grads(), &two, "then added");
        // Left stale again, then an autograd pass: zeroed first.
        buffers.updated();
        buffers.backward(autograd_loss(), network, 1.0, &mut optimizer, true);
        assert_same(&grads(), &autograd, "zeroed before autograd");
        assert!(buffers.zero_in_update(), "autograd's update zeroes them");
    }
}
