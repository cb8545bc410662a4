//! Samplers driven by the closed-form optimal denoiser for Gaussian data must reproduce the
//! data distribution. No training involved: if a sampler's update is wrong, the sample mean or
//! covariance comes out wrong.
//!
//! For x₀ ~ N(μ, Σ) and x_t = a x₀ + s ε (a = √ᾱ_t, s = √(1−ᾱ_t)), the posterior mean is
//! E[x₀ | x_t] = μ + aΣ(a²Σ + s²I)⁻¹(x_t − aμ), and the optimal ε-prediction is
//! (x_t − a E[x₀ | x_t]) / s.

use difflab_samplers::{
    ColdAlgorithm, ColdSampler, Conditioning, DdimSampler, DdpmSampler, Denoiser, FnDenoiser,
    GlobalSeedNoise, NoiseSource, Sampler, X0Processing,
};
use difflab_schedulers::degradation::GaussianNoise;
use difflab_schedulers::{
    BetaScheduleKind, Prediction, Schedule, ScheduleConfig, TimestepSpacing, VarianceType,
};
use tch::{Device, Kind, Tensor};

const MU: [f64; 2] = [1.0, -0.5];
const SIGMA: [[f64; 2]; 2] = [[0.5, 0.2], [0.2, 0.3]];
const N: i64 = 4000;

/// E[x₀ | x_t] for a batch sharing ᾱ.
fn posterior_mean(x_t: &Tensor, alpha_bar: f64) -> Tensor {
    let a = alpha_bar.sqrt();
    let s2 = 1.0 - alpha_bar;
    // K = a²Σ + s²I, M = aΣK⁻¹ (2×2, in f64).
    let k = [
        [a * a * SIGMA[0][0] + s2, a * a * SIGMA[0][1]],
        [a * a * SIGMA[1][0], a * a * SIGMA[1][1] + s2],
    ];
    let det = k[0][0] * k[1][1] - k[0][1] * k[1][0];
    let kinv = [
        [k[1][1] / det, -k[0][1] / det],
        [-k[1][0] / det, k[0][0] / det],
    ];
    let mut m = [[0.0; 2]; 2];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a * (SIGMA[i][0] * kinv[0][j] + SIGMA[i][1] * kinv[1][j]);
        }
    }
    let mu = Tensor::from_slice(&MU).to_kind(Kind::Float);
    let m_t = Tensor::from_slice(&[m[0][0], m[1][0], m[0][1], m[1][1]])
        .to_kind(Kind::Float)
        .reshape([2, 2]);
    &mu + (x_t - &mu * a).matmul(&m_t)
}

fn level(t: &Tensor) -> i64 {
    t.int64_value(&[0])
}

fn schedule() -> difflab_schedulers::NoiseSchedule {
    ScheduleConfig::new(BetaScheduleKind::Linear, 1000)
        .build()
        .unwrap()
}

/// Sample mean and covariance of `x` (`[N, 2]`), in f64.
fn moments(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Double);
    let mean = x.mean_dim(0, false, Kind::Double);
    let centred = &x - &mean;
    let cov = centred.transpose(0, 1).matmul(&centred) / (x.size()[0] - 1) as f64;
    (mean, cov)
}

/// Mean within `tol_mean` and every covariance entry within `tol_cov` of the data's.
fn assert_moments(x: &Tensor, what: &str, tol_mean: f64, tol_cov: f64) {
    let (mean, cov) = moments(x);
    for i in 0..2 {
        let m = mean.double_value(&[i]);
        assert!(
            (m - MU[i as usize]).abs() < tol_mean,
            "{what}: mean[{i}] = {m}, want {}",
            MU[i as usize]
        );
        for j in 0..2 {
            let c = cov.double_value(&[i, j]);
            let want = SIGMA[i as usize][j as usize];
            assert!(
                (c - want).abs() < tol_cov,
                "{what}: cov[{i}][{j}] = {c}, want {want}"
            );
        }
    }
}

/// Standard-normal start points whitened to have exactly zero mean and identity covariance.
/// With the (linear) Gaussian oracle a deterministic sampler is an affine map, so its output
/// moments then measure the sampler alone, free of Monte-Carlo error.
fn whitened_start(seed: u64) -> Tensor {
    let z = GlobalSeedNoise::new(seed).draw(&[N, 2], Kind::Double, Device::Cpu);
    let (mean, cov) = moments(&z);
    let l = cov.linalg_cholesky(false);
    let centred = (z - mean).transpose(0, 1);
    Tensor::linalg_solve_triangular(&l, &centred, false, true, false)
        .transpose(0, 1)
        .to_kind(Kind::Float)
}

/// Monte-Carlo check for stochastic samplers: 4 standard errors at N = 4000 is about 0.05.
fn assert_matches_data(x: &Tensor, what: &str) {
    assert_moments(x, what, 0.05, 0.05);
}

fn start_noise(seed: u64) -> (Tensor, GlobalSeedNoise) {
    let mut noise = GlobalSeedNoise::new(seed);
    let x_t = noise.draw(&[N, 2], Kind::Float, Device::Cpu);
    (x_t, noise)
}

fn oracle(schedule: &impl Schedule, prediction: Prediction) -> impl Denoiser + '_ {
    FnDenoiser::new(
        prediction,
        move |x: &Tensor, t: &Tensor, _: &Conditioning| {
            let ab = schedule.alpha_bar(level(t) as usize);
            let (a, sd) = (ab.sqrt(), (1.0 - ab).sqrt());
            let x0 = posterior_mean(x, ab);
            let eps = (x - &x0 * a) / sd;
            match prediction {
                Prediction::Eps => eps,
                Prediction::X0 => x0,
                Prediction::V => eps * a - x0 * sd,
            }
        },
    )
}

#[test]
fn ddpm_1000_steps_with_the_optimal_denoiser_reproduces_the_gaussian() {
    let s = schedule();
    for (variance, seed) in [(VarianceType::FixedSmall, 1), (VarianceType::FixedLarge, 2)] {
        let sampler = DdpmSampler::new(
            &s,
            None,
            TimestepSpacing::Leading,
            0,
            variance,
            X0Processing::None,
        )
        .unwrap();
        let (x_t, mut noise) = start_noise(seed);
        let x0 = sampler.sample(
            &oracle(&s, Prediction::Eps),
            x_t,
            &Conditioning::none(),
            &mut noise,
            &mut |_| {},
        );
        assert_matches_data(&x0.unwrap(), &format!("ddpm {variance:?}"));
    }
}

/// DDIM is a first-order ODE solver: at 50 steps it under-disperses this Gaussian by about 6%
/// (measured: var 0.468 for 0.5); the error must shrink with more steps.
#[test]
fn ddim_eta0_with_the_optimal_denoiser_reproduces_the_gaussian_and_converges() {
    let s = schedule();
    for prediction in [Prediction::Eps, Prediction::X0, Prediction::V] {
        for (steps, tol) in [(50, 0.05), (500, 0.005)] {
            let sampler = DdimSampler::new(
                &s,
                steps,
                TimestepSpacing::Leading,
                1,
                true,
                0.0,
                X0Processing::None,
            )
            .unwrap();
            let x_t = whitened_start(7);
            let mut noise = GlobalSeedNoise::new(0);
            let x0 = sampler.sample(
                &oracle(&s, prediction),
                x_t,
                &Conditioning::none(),
                &mut noise,
                &mut |_| {},
            );
            assert_moments(
                &x0.unwrap(),
                &format!("ddim-{steps} {prediction:?}"),
                tol,
                tol,
            );
        }
    }
}

#[test]
fn ddim_eta1_is_stochastic_and_reproduces_the_gaussian() {
    let s = schedule();
    let sampler = DdimSampler::new(
        &s,
        100,
        TimestepSpacing::Leading,
        1,
        true,
        1.0,
        X0Processing::None,
    )
    .unwrap();
    let (x_t, mut noise) = start_noise(3);
    let x0 = sampler.sample(
        &oracle(&s, Prediction::Eps),
        x_t,
        &Conditioning::none(),
        &mut noise,
        &mut |_| {},
    );
    assert_matches_data(&x0.unwrap(), "ddim-100 eta=1");
}

#[test]
fn cold_algorithm_2_with_noise_degradation_reproduces_the_gaussian() {
    let s = schedule();
    // Cold levels are 1-based: level l uses ᾱ_{l−1}, level 0 is the data.
    let x0_oracle = FnDenoiser::new(
        Prediction::X0,
        |x: &Tensor, t: &Tensor, _: &Conditioning| {
            let l = level(t);
            if l == 0 {
                x.shallow_clone()
            } else {
                posterior_mean(x, s.alpha_bar(l as usize - 1))
            }
        },
    );
    for (steps, tol) in [(50, 0.05), (500, 0.005)] {
        let degradation = Box::new(GaussianNoise::new(&s, Device::Cpu));
        let sampler = ColdSampler::new(
            degradation,
            Some(steps),
            ColdAlgorithm::Improved,
            X0Processing::None,
        )
        .unwrap();
        let x_t = whitened_start(8);
        let mut noise = GlobalSeedNoise::new(0);
        let x0 = sampler.sample(
            &x0_oracle,
            x_t,
            &Conditioning::none(),
            &mut noise,
            &mut |_| {},
        );
        assert_moments(
            &x0.unwrap(),
            &format!("cold alg. 2 (noise), {steps} steps"),
            tol,
            tol,
        );
    }
}

#[test]
fn cold_algorithm_2_with_noise_equals_ddim_eta0_trailing() {
    let s = schedule();
    let cold_oracle = FnDenoiser::new(
        Prediction::X0,
        |x: &Tensor, t: &Tensor, _: &Conditioning| {
            posterior_mean(x, s.alpha_bar(level(t) as usize - 1))
        },
    );
    let ddim = DdimSampler::new(
        &s,
        50,
        TimestepSpacing::Trailing,
        0,
        true,
        0.0,
        X0Processing::None,
    )
    .unwrap();
    let degradation = Box::new(GaussianNoise::new(&s, Device::Cpu));
    let cold = ColdSampler::new(
        degradation,
        Some(50),
        ColdAlgorithm::Improved,
        X0Processing::None,
    )
    .unwrap();
    let (x_t, mut noise) = start_noise(5);
    let a = ddim.sample(
        &oracle(&s, Prediction::X0),
        x_t.copy(),
        &Conditioning::none(),
        &mut noise,
        &mut |_| {},
    );
    let b = cold.sample(
        &cold_oracle,
        x_t,
        &Conditioning::none(),
        &mut noise,
        &mut |_| {},
    );
    let diff = (a.unwrap() - b.unwrap()).abs().max().double_value(&[]);
    assert!(
        diff < 1e-4,
        "cold alg. 2 with noise should be DDIM(eta=0): max diff {diff}"
    );
}

#[test]
fn a_wrong_update_is_caught_by_the_oracle_test() {
    // The statistics test has teeth: DDIM driven by an oracle for the wrong schedule (cosine
    // instead of linear) must not reproduce the data.
    let s = schedule();
    let wrong = ScheduleConfig::new(BetaScheduleKind::Cosine, 1000)
        .build()
        .unwrap();
    let sampler = DdimSampler::new(
        &s,
        50,
        TimestepSpacing::Leading,
        1,
        true,
        0.0,
        X0Processing::None,
    )
    .unwrap();
    let x_t = whitened_start(9);
    let mut noise = GlobalSeedNoise::new(0);
    let x0 = sampler.sample(
        &oracle(&wrong, Prediction::Eps),
        x_t,
        &Conditioning::none(),
        &mut noise,
        &mut |_| {},
    );
    let x0 = x0.unwrap();
    let result = std::panic::catch_unwind(|| assert_moments(&x0, "wrong schedule", 0.05, 0.05));
    assert!(
        result.is_err(),
        "a mismatched oracle should fail the distribution check"
    );
}
