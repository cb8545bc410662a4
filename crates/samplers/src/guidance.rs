//! Classifier-free guidance as a denoiser combinator.

use difflab_schedulers::Prediction;
use tch::Tensor;

use crate::{Conditioning, Denoiser};

/// Classifier-free guidance (Ho & Salimans 2022): out = u + w·(c − u), with c the conditional
/// and u the unconditional output. w = 1 is the plain conditional model, w = 0 the
/// unconditional one (the diffusers / imagen `guidance_scale` convention). Both halves run in
/// one batched call. The combination is affine with weights summing to one, so it commutes with
/// the ε / x₀ / v conversions and works with every sampler.
pub struct ClassifierFreeGuidance<D> {
    inner: D,
    scale: f64,
    null_class: i64,
}

impl<D: Denoiser> ClassifierFreeGuidance<D> {
    /// Guide `inner` with weight `scale`; `null_class` is the label index of the unconditional
    /// embedding (ignored when there are no class labels).
    pub fn new(inner: D, scale: f64, null_class: i64) -> Self {
        Self {
            inner,
            scale,
            null_class,
        }
    }

    /// The guidance weight w.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl<D: Denoiser> Denoiser for ClassifierFreeGuidance<D> {
    fn prediction(&self) -> Prediction {
        self.inner.prediction()
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        if self.scale == 1.0 {
            return self.inner.forward(x_t, t, cond);
        }
        let uncond = cond.unconditional(self.null_class);
        if self.scale == 0.0 {
            return self.inner.forward(x_t, t, &uncond);
        }
        let x2 = Tensor::cat(&[x_t, x_t], 0);
        // A shared timestep stays shared (stride 0) for the doubled batch.
        let t2 = if crate::is_shared_timestep(t) {
            t.narrow(0, 0, 1).expand([2 * t.size()[0]], false)
        } else {
            Tensor::cat(&[t, t], 0)
        };
        let out = self.inner.forward(&x2, &t2, &cond.cat(&uncond));
        let halves = out.chunk(2, 0);
        let (c, u) = (&halves[0], &halves[1]);
        u + (c - u) * self.scale
    }
}
