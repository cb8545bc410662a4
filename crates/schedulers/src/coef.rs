//! A schedule coefficient that is either one number for the whole batch (sampling) or one per
//! sample, broadcastable against the data (training with per-sample timesteps).

use tch::Tensor;

/// A multiplier such as √ᾱ_t: an `f64` shared by the batch, or a `[B, 1, …]` tensor.
pub trait Coef: Copy {
    /// `self · x`.
    fn mul(self, x: &Tensor) -> Tensor;
    /// `x / self`.
    fn div(self, x: &Tensor) -> Tensor;
}

impl Coef for f64 {
    fn mul(self, x: &Tensor) -> Tensor {
        x * self
    }
    fn div(self, x: &Tensor) -> Tensor {
        x / self
    }
}

impl Coef for &Tensor {
    fn mul(self, x: &Tensor) -> Tensor {
        x * self
    }
    fn div(self, x: &Tensor) -> Tensor {
        x / self
    }
}
