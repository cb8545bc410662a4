//! The training loss of one batch: draw timesteps and noise, corrupt, predict, compare.

use difflab_schedulers::{Degradation, ForwardProcess, Prediction};
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Elementwise loss between prediction and target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean squared error (Ho et al. 2020, the "simple" loss).
    Mse,
    /// Mean absolute error (Bansal et al. 2022 use it for cold diffusion).
    L1,
}

/// Per-sample loss weight from Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via
/// Min-SNR Weighting Strategy", eq. 8), expressed for each prediction type so that every
/// objective optimises the same x₀-space weighting min(SNR, γ):
/// ε: min(SNR, γ)/SNR, x₀: min(SNR, γ), v: min(SNR, γ)/(SNR + 1).
pub fn min_snr_weight(snr: &Tensor, gamma: f64, prediction: Prediction) -> Tensor {
    let clipped = snr.clamp_max(gamma);
    match prediction {
        Prediction::Eps => &clipped / snr.clamp_min(1e-12),
        Prediction::X0 => clipped,
        Prediction::V => &clipped / (snr + 1.0),
    }
}

/// Mean over all but the batch dimension of the elementwise loss: `[B]`.
pub fn per_sample_loss(pred: &Tensor, target: &Tensor, kind: LossKind) -> Tensor {
    let elementwise = match kind {
        LossKind::Mse => pred.mse_loss(target, Reduction::None),
        LossKind::L1 => pred.l1_loss(target, Reduction::None),
    };
    elementwise.flatten(1, -1).mean_dim(1, false, Kind::Float)
}

/// Inputs of one Gaussian-diffusion loss evaluation (all drawn by the caller from the step's
/// seed, so a step is a pure function of (seed, step, batch)).
pub struct GaussianLossInputs<'a> {
    /// Clean data x₀, `[B, …]`.
    pub x0: &'a Tensor,
    /// Timesteps, int64 `[B]`.
    pub t: &'a Tensor,
    /// Noise ε, shape of x₀ (offset noise already added).
    pub noise: &'a Tensor,
}

/// The Gaussian diffusion loss: x_t = √ᾱ x₀ + √(1−ᾱ) ε, target per `prediction`, optional
/// Min-SNR-γ weighting; `model(x_t, t)` is the network. Returns the scalar mean loss.
pub fn gaussian_loss(
    inputs: &GaussianLossInputs<'_>,
    forward: &ForwardProcess,
    prediction: Prediction,
    loss: LossKind,
    min_snr_gamma: Option<f64>,
    model: impl FnOnce(&Tensor, &Tensor) -> Tensor,
) -> Tensor {
    let x_t = forward.q_sample(inputs.x0, inputs.t, inputs.noise);
    let target = forward.target(prediction, inputs.x0, inputs.t, inputs.noise);
    let pred = model(&x_t, inputs.t);
    let per_sample = per_sample_loss(&pred, &target, loss);
    match min_snr_gamma {
        Some(gamma) => (per_sample * min_snr_weight(&forward.snr(inputs.t), gamma, prediction))
            .mean(Kind::Float),
        None => per_sample.mean(Kind::Float),
    }
}

/// The cold-diffusion loss (Bansal et al. 2022, eq. 1): ‖R(D(x₀, t), t) − x₀‖ with t ≥ 1.
/// `noise` feeds stochastic degradations.
pub fn cold_loss(
    x0: &Tensor,
    t: &Tensor,
    noise: &Tensor,
    degradation: &dyn Degradation,
    loss: LossKind,
    model: impl FnOnce(&Tensor, &Tensor) -> Tensor,
) -> Tensor {
    let x_t = degradation.degrade(x0, t, Some(noise));
    let pred = model(&x_t, t);
    per_sample_loss(&pred, x0, loss).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use difflab_schedulers::ScheduleConfig;
    use tch::Device;

    #[test]
    fn min_snr_weights_match_the_paper_for_each_objective() {
        let snr = Tensor::from_slice(&[0.5f32, 5.0, 50.0]);
        let w = |p| Vec::<f32>::try_from(min_snr_weight(&snr, 5.0, p)).unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&w(Prediction::Eps), &[1.0, 1.0, 0.1]));
        assert!(close(&w(Prediction::X0), &[0.5, 5.0, 5.0]));
        assert!(close(
            &w(Prediction::V),
            &[0.5 / 1.5, 5.0 / 6.0, 5.0 / 51.0]
        ));
    }

    #[test]
    fn a_perfect_model_has_zero_loss_and_a_wrong_one_does_not() {
        let schedule = ScheduleConfig::default().build().unwrap();
        let fp = ForwardProcess::new(&schedule, Device::Cpu);
        tch::manual_seed(0);
        let x0 = Tensor::rand([4, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let noise = Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 10, 500, 999]);
        let inputs = GaussianLossInputs {
            x0: &x0,
            t: &t,
            noise: &noise,
        };
        for prediction in [Prediction::Eps, Prediction::X0, Prediction::V] {
            let target = fp.target(prediction, &x0, &t, &noise);
            for gamma in [None, Some(5.0)] {
                let perfect =
                    gaussian_loss(&inputs, &fp, prediction, LossKind::Mse, gamma, |_, _| {
                        target.copy()
                    });
                assert!(perfect.double_value(&[]) < 1e-10, "{prediction:?}");
                let off = gaussian_loss(&inputs, &fp, prediction, LossKind::L1, gamma, |_, _| {
                    &target + 0.5
                });
                assert!(off.double_value(&[]) > 0.01, "{prediction:?}");
            }
        }
    }
}
