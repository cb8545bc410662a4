//! The low-resolution input of a super-resolution stage: made from the high-resolution image by
//! area downsampling, and noised by *noise-conditioning augmentation* (Ho et al. 2022,
//! "Cascaded Diffusion Models", §4.2; Saharia et al. 2022, "Imagen", §2.5).
//!
//! The augmented input is `z_s = √ᾱ(s)·x_lr + √(1−ᾱ(s))·ε` with a continuous level `s ∈ [0, 1]`
//! and the cosine curve `ᾱ(s) = f(s)/f(0)`, `f(s) = cos²(π/2 · (s + 0.008)/1.008)`
//! (Nichol & Dhariwal 2021), so `s = 0` is the clean image and `s = 1` pure noise. Training
//! draws `s ~ U[0, train_max]` per image; sampling uses one fixed level. The level is fed to
//! the network, which therefore learns how much to trust its input. Both the training
//! target and the sampler are the ordinary ones on the high-resolution image: the stage
//! denoises the same x_t in training and in sampling.

use tch::{Kind, Tensor};

/// ᾱ(s) of the augmentation curve, for levels in `[0, 1]` (any shape).
pub fn augmentation_alpha_bar(level: &Tensor) -> Tensor {
    const S: f64 = 0.008;
    let f = |s: &Tensor| {
        ((s + S) / (1.0 + S) * std::f64::consts::FRAC_PI_2)
            .cos()
            .square()
    };
    let f0 = ((S / (1.0 + S)) * std::f64::consts::FRAC_PI_2)
        .cos()
        .powi(2);
    (f(&level.to_kind(Kind::Double)) / f0).clamp(0.0, 1.0)
}

/// `√ᾱ(s)·x + √(1−ᾱ(s))·noise` with `level` `[B]` (one level per image of `x`, `[B, C, h, w]`).
pub fn augment_lowres(x: &Tensor, level: &Tensor, noise: &Tensor) -> Tensor {
    let a = augmentation_alpha_bar(level)
        .to_kind(x.kind())
        .reshape([-1, 1, 1, 1]);
    &a.sqrt() * x + (a.ones_like() - &a).sqrt() * noise
}

/// The low-resolution input of a sampling step: `x` (`[B, C, h, w]`) augmented at one fixed
/// `level`, with its noise drawn from `noise`. Returns the augmented images and the `[B]`
/// levels, as [`difflab_samplers::Conditioning`]'s `image` and `noise_level` take them.
pub fn augment_at_level(
    x: &Tensor,
    level: f64,
    noise: &mut dyn difflab_samplers::NoiseSource,
) -> (Tensor, Tensor) {
    let z = noise.draw(&x.size(), Kind::Float, x.device());
    let s = Tensor::full([x.size()[0]], level, (Kind::Float, x.device()));
    (augment_lowres(x, &s, &z), s)
}

/// Area downsampling of `x` (`[B, C, H, W]`) to `resolution`² — the mean of each `H/r × W/r`
/// block (`torch.nn.functional.interpolate(mode="area")`); `resolution` must divide `H` and `W`.
pub fn area_downsample(x: &Tensor, resolution: i64) -> Tensor {
    x.adaptive_avg_pool2d([resolution, resolution])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn levels_zero_and_one_are_clean_and_pure_noise() {
        let a = augmentation_alpha_bar(&Tensor::from_slice(&[0.0f64, 0.5, 1.0]));
        let a = Vec::<f64>::try_from(a).unwrap();
        assert!((a[0] - 1.0).abs() < 1e-12, "ᾱ(0) = {}", a[0]);
        assert!(a[2] < 1e-12, "ᾱ(1) = {}", a[2]);
        // f(0.5)/f(0) by hand.
        let f = |s: f64| {
            ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        assert!((a[1] - f(0.5) / f(0.0)).abs() < 1e-12);
    }

    #[test]
    fn augmentation_preserves_unit_variance_and_mixes_in_the_noise() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([64, 1, 16, 16], opts);
        let noise = Tensor::randn([64, 1, 16, 16], opts);
        let level = Tensor::full([64], 0.3, opts);
        let z = augment_lowres(&x, &level, &noise);
        let var = z.var(true).double_value(&[]);
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        let a = augmentation_alpha_bar(&Tensor::from(0.3f64)).double_value(&[]);
        let cov = (&z * &x).mean(Kind::Float).double_value(&[]);
        assert!(
            (cov - a.sqrt()).abs() < 0.03,
            "cov {cov} vs √ᾱ {}",
            a.sqrt()
        );
        let zero = augment_lowres(&x, &level.zeros_like(), &noise);
        assert!(zero.allclose(&x, 1e-6, 1e-6, false));
    }

    #[test]
    fn area_downsampling_averages_blocks() {
        let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([1, 1, 4, 4]);
        let y = area_downsample(&x, 2);
        let v = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        assert_eq!(v, [2.5, 4.5, 10.5, 12.5]);
    }
}
