//! What to do to a predicted x₀ before it is used: nothing, clip, or dynamic thresholding.

use tch::{Kind, Tensor};

/// Post-processing of the predicted x₀ inside a sampler step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum X0Processing {
    /// Use x₀ as predicted.
    #[default]
    None,
    /// Clamp to [−range, range] (diffusers `clip_sample`, `clip_sample_range`).
    Clip {
        /// Half-width of the data range.
        range: f64,
    },
    /// Dynamic thresholding (Saharia et al. 2022, Imagen §2.3): per sample, s = the `ratio`
    /// quantile of |x₀|, clamped to [1, `max_value`]; x₀ ← clamp(x₀, −s, s)/s.
    DynamicThreshold {
        /// Quantile of |x₀| (0.995 in Imagen).
        ratio: f64,
        /// Upper bound on s (diffusers `sample_max_value`).
        max_value: f64,
    },
}

impl X0Processing {
    /// Apply to a batch of predictions (dim 0 is the batch).
    pub fn apply(&self, x0: Tensor) -> Tensor {
        match *self {
            Self::None => x0,
            Self::Clip { range } => x0.clamp(-range, range),
            Self::DynamicThreshold { ratio, max_value } => {
                let shape = x0.size();
                let flat = x0.reshape([shape[0], -1]);
                let kind = flat.kind();
                // quantile needs float/double; compute in f32 at least.
                let abs = flat.abs().to_kind(if kind == Kind::Double {
                    Kind::Double
                } else {
                    Kind::Float
                });
                let s = abs
                    .quantile_scalar(ratio, Some(1), true, "linear")
                    .clamp(1.0, max_value)
                    .to_kind(kind);
                let lo = -&s;
                flat.clamp_tensor(Some(&lo), Some(&s))
                    .divide(&s)
                    .reshape(&shape[..])
            }
        }
    }
}
