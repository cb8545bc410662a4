//! The adapter that lets a sampler call a network: models know nothing of prediction types or
//! conditioning structs, samplers know nothing of networks.

use difflab_models::UNet;
use difflab_samplers::{Conditioning, Denoiser};
use difflab_schedulers::Prediction;
use tch::Tensor;

/// A [`UNet`] seen as a [`Denoiser`] whose output is `prediction` (the objective it was
/// trained with). Runs in eval mode (no dropout).
pub struct UNetDenoiser<'a> {
    unet: &'a UNet,
    prediction: Prediction,
}

impl<'a> UNetDenoiser<'a> {
    /// Wrap `unet`, trained to predict `prediction`.
    pub fn new(unet: &'a UNet, prediction: Prediction) -> Self {
        Self { unet, prediction }
    }
}

impl Denoiser for UNetDenoiser<'_> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        self.unet.forward(x_t, t, cond.class_labels.as_ref(), false)
    }
}
