//! The seam between samplers and networks.

use difflab_schedulers::Prediction;
use tch::Tensor;

use crate::Conditioning;

/// Anything that maps (x_t, per-sample t, conditioning) to a prediction of ε, x₀ or v.
/// A UNet, an expert ensemble, a guided model or a closed-form oracle all look the same to a
/// sampler.
pub trait Denoiser {
    /// What [`Denoiser::forward`] returns.
    fn prediction(&self) -> Prediction;

    /// The network output for `x_t` at timesteps `t` (int64 `[B]`).
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        (**self).forward(x_t, t, cond)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Box<D> {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        (**self).forward(x_t, t, cond)
    }
}

/// A denoiser from a closure: for tests, closed-form oracles and quick experiments.
pub struct FnDenoiser<F> {
    prediction: Prediction,
    f: F,
}

impl<F: Fn(&Tensor, &Tensor, &Conditioning) -> Tensor> FnDenoiser<F> {
    /// Wrap `f`, which returns a `prediction`.
    pub fn new(prediction: Prediction, f: F) -> Self {
        Self { prediction, f }
    }
}

impl<F: Fn(&Tensor, &Tensor, &Conditioning) -> Tensor> Denoiser for FnDenoiser<F> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        (self.f)(x_t, t, cond)
    }
}
