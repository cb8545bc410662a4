//! Cold-diffusion degradation operators D(x₀, t) (Bansal et al. 2022, "Cold Diffusion:
//! Inverting Arbitrary Image Transforms Without Noise").
//!
//! A degradation has severity levels t ∈ [0, T] with D(x₀, 0) = x₀. Every operator is
//! deterministic given its inputs (the Gaussian one takes its noise as an input) and
//! differentiable in x₀ where the maths allows, so a restoration network can be trained through it.
//!
//! | name       | operator          | D(x₀, t)                                              |
//! |------------|-------------------|-------------------------------------------------------|
//! | `noise`    | [`GaussianNoise`] | √ᾱ'_t x₀ + √(1−ᾱ'_t) z                                |
//! | `blur`     | [`GaussianBlur`]  | G_{σ_t} ∗ x₀, σ_t = σ_max · √(t/T)                    |
//! | `fade`     | [`Fade`]          | (1 − t/T) x₀ + (t/T) fill                             |
//! | `mask`     | [`GaussianMask`]  | m_t x₀ + (1 − m_t) fill, m_t = ∏ᵢ₌₁ᵗ (1 − e^{−r²/2βᵢ²}) |
//! | `pixelate` | [`Pixelate`]      | nearest-up(area-down(x₀, s_t))                        |
//!
//! Levels outside [0, T] are clamped to [0, T] by every operator (no panic).

mod blur;
mod config;
mod fade;
mod mask;
mod noise;
mod pixelate;

pub use blur::GaussianBlur;
pub use config::DegradationConfig;
pub use fade::Fade;
pub use mask::GaussianMask;
pub use noise::GaussianNoise;
pub use pixelate::Pixelate;

use tch::{Device, Kind, Tensor};

/// A degradation D(x₀, t) with severity levels t ∈ [0, T], t = 0 the identity.
pub trait Degradation: Send {
    /// A short name for logs and file names (`noise`, `blur`, …).
    fn name(&self) -> &'static str;

    /// T, the most severe level.
    fn num_steps(&self) -> i64;

    /// D(x₀, t) for per-sample levels `t` (int64, shape `[B]`, values in [0, T]; values outside
    /// are clamped to [0, T]).
    ///
    /// `noise` is the noise realisation for stochastic degradations (shape of `x0`); deterministic
    /// ones ignore it. A stochastic degradation given `None` returns its noise-free mean.
    fn degrade(&self, x0: &Tensor, t: &Tensor, noise: Option<&Tensor>) -> Tensor;

    /// True when D depends on a noise realisation (samplers then draw or infer it).
    fn is_stochastic(&self) -> bool {
        false
    }

    /// For stochastic degradations, the noise that maps an estimate `x0` to `x_t` at level `t`
    /// (used by Algorithm 2 to keep the same noise realisation across a step); `None` for
    /// deterministic ones.
    fn implied_noise(&self, _x_t: &Tensor, _x0: &Tensor, _t: &Tensor) -> Option<Tensor> {
        None
    }
}

/// Per-sample levels as int64 on `device`, clamped to [0, `steps`].
pub(crate) fn clamped_levels(t: &Tensor, steps: i64, device: Device) -> Tensor {
    t.to_kind(Kind::Int64).to_device(device).clamp(0, steps)
}

/// Per-sample levels on the host, clamped to [0, `steps`] (for operators whose shapes depend on
/// the level; `t` is tiny, so the copy is cheap).
pub(crate) fn host_levels(t: &Tensor, steps: i64) -> Vec<i64> {
    let t = clamped_levels(t, steps, Device::Cpu).reshape([-1]);
    Vec::<i64>::try_from(&t).expect("int64 levels convert to Vec<i64>")
}
