//! What training minimises: the corruption process, the regression target, the elementwise
//! loss and its per-sample weighting ([`Objective`]), and the loss of one micro-batch's
//! [`StepInputs`].

use difflab_schedulers::{Degradation, ForwardProcess, NoiseSchedule, Prediction};
use tch::{Device, Kind, Reduction, Tensor};

use super::{LossKind, ProcessConfig, StepInputs, TrainError, to_channels_last};
use difflab_pipeline::{ExperimentConfig, Network};

/// The corruption process, built once.
pub(crate) enum Process {
    /// Gaussian diffusion: `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`, `t` uniform in `timesteps`.
    Gaussian {
        forward: ForwardProcess,
        timesteps: (i64, i64),
    },
    /// Cold diffusion: `x_t = D(x₀, t)`, `t` uniform in `levels`.
    Cold {
        degradation: Box<dyn Degradation>,
        levels: (i64, i64),
    },
}

impl Process {
    /// The half-open range `[lo, hi)` training draws `t` from.
    pub(crate) fn levels(&self) -> (i64, i64) {
        match self {
            Self::Gaussian { timesteps, .. } => *timesteps,
            Self::Cold { levels, .. } => *levels,
        }
    }
}

/// What a training step minimises: `process` corrupts x₀ into x_t, the network predicts
/// `prediction` (ε, x₀ or v), and `loss` compares, weighted per sample by Min-SNR-γ when set.
pub(crate) struct Objective {
    /// The corruption process.
    pub process: Process,
    /// What the network predicts.
    pub prediction: Prediction,
    /// The elementwise loss.
    pub loss: LossKind,
    /// Min-SNR-γ weighting (Gaussian only).
    pub min_snr_gamma: Option<f64>,
    /// Feed the network channels-last inputs (`training.memory_format`).
    channels_last: bool,
}

impl Objective {
    /// The objective `config` trains, on `device`; the error names the inconsistent key.
    pub(crate) fn new(
        config: &ExperimentConfig,
        schedule: &NoiseSchedule,
        device: Device,
    ) -> Result<Self, TrainError> {
        let training = &config.training;
        let process = match &config.process {
            ProcessConfig::Gaussian => {
                let t = schedule.alphas_cumprod.len() as i64;
                let (lo, hi) = match training.timestep_range {
                    Some([lo, hi]) if hi as i64 <= t => (lo as i64, hi as i64),
                    Some([lo, hi]) => {
                        return Err(TrainError::Config(format!(
                            "invalid training.timestep_range = [{lo}, {hi}): must lie in [0, {t}] (schedule.timesteps)"
                        )));
                    }
                    None => (0, t),
                };
                Process::Gaussian {
                    forward: ForwardProcess::new(schedule, device),
                    timesteps: (lo, hi),
                }
            }
            ProcessConfig::Cold { degradation } => {
                if config.objective != Prediction::X0 {
                    return Err(TrainError::Config(format!(
                        "process.kind: cold trains a restoration network: set objective: x0 (got {:?})",
                        config.objective
                    )));
                }
                let degradation = degradation.build(schedule, device)?;
                let n = degradation.num_steps();
                let (lo, hi) = match training.timestep_range {
                    Some([lo, hi]) => ((lo as i64).max(1), (hi as i64).min(n + 1)),
                    None => (1, n + 1),
                };
                Process::Cold {
                    degradation,
                    levels: (lo, hi),
                }
            }
        };
        let loss = training.loss.unwrap_or(match process {
            Process::Gaussian { .. } => LossKind::Mse,
            Process::Cold { .. } => LossKind::L1,
        });
        Ok(Self {
            process,
            prediction: config.objective,
            loss,
            min_snr_gamma: training.min_snr_gamma,
            channels_last: training.memory_format.channels_last_for(&config.model),
        })
    }

    /// The loss terms of `inputs`, the prediction made by `model(x_t, t)`.
    pub(crate) fn terms(
        &self,
        inputs: &StepInputs,
        model: impl FnOnce(&Tensor, &Tensor) -> Tensor,
    ) -> RegressionLoss {
        match &self.process {
            Process::Gaussian { forward, .. } => {
                let gaussian = GaussianLossInputs {
                    x0: &inputs.x0,
                    t: &inputs.t,
                    noise: &inputs.noise,
                };
                let gamma = self.min_snr_gamma;
                gaussian_loss(&gaussian, forward, self.prediction, self.loss, gamma, model)
            }
            Process::Cold { degradation, .. } => cold_loss(
                &inputs.x0,
                &inputs.t,
                &inputs.noise,
                degradation.as_ref(),
                self.loss,
                model,
            ),
        }
    }

    /// The loss terms of `inputs` with `network`'s training forward pass (dropout on, inputs
    /// channels-last when configured).
    pub(crate) fn network_terms(&self, network: &Network, inputs: &StepInputs) -> RegressionLoss {
        self.terms(inputs, |x_t, t| {
            if self.channels_last {
                network.forward_cond(&to_channels_last(x_t), t, &inputs.cond, true)
            } else {
                network.forward_cond(x_t, t, &inputs.cond, true)
            }
        })
    }
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

/// A regression loss before its reduction, `L = (1/B) Σ_i w_i · mean_j ℓ(pred_ij − target_ij)`
/// (`w_i = 1` without per-sample weights, `ℓ` squared or absolute error): its value, through
/// autograd when `pred` records a graph, and its gradient `∂L/∂pred` in closed form, for
/// networks that backpropagate by hand (the MLP's taped pass) and so skip autograd's walk over
/// the loss's own operations.
pub struct RegressionLoss {
    /// The network's output `[B, …]`.
    pub pred: Tensor,
    /// What it should have been, the shape of `pred`.
    pub target: Tensor,
    /// Squared or absolute error.
    pub kind: LossKind,
    /// Per-sample weights `[B]` (Min-SNR-γ), if any.
    pub weights: Option<Tensor>,
}

impl RegressionLoss {
    /// The scalar loss `L`.
    pub fn value(&self) -> Tensor {
        let per_sample = per_sample_loss(&self.pred, &self.target, self.kind);
        match &self.weights {
            Some(w) => (per_sample * w).mean(Kind::Float),
            None => per_sample.mean(Kind::Float),
        }
    }

    /// `(L, ∂(scale·L)/∂pred)` without autograd, for a network that backpropagates by hand:
    /// one difflab pass over contiguous f32 CPU tensors that do not record gradients (the sums
    /// in f64, so `L` can differ from [`RegressionLoss::value`] in its last bit), else
    /// [`RegressionLoss::value`] and [`RegressionLoss::grad_pred`] in libtorch operations.
    pub fn value_and_grad(&self, scale: f64) -> (Tensor, Tensor) {
        #[cfg(feature = "kernels")]
        if let Some(both) = difflab_kernels::loss::regression_value_and_grad(
            &self.pred,
            &self.target,
            self.weights.as_ref(),
            self.kind == LossKind::Mse,
            scale,
        ) {
            return both;
        }
        let _guard = tch::no_grad_guard();
        (self.value().detach(), self.grad_pred(scale))
    }

    /// `∂(scale·L)/∂pred` without autograd: `scale · w_i · 2(pred − target)/n` for squared
    /// error, `scale · w_i · sign(pred − target)/n` for absolute error (0 where they are
    /// equal, as autograd's), `n` the number of elements of `pred`.
    pub fn grad_pred(&self, scale: f64) -> Tensor {
        let _guard = tch::no_grad_guard();
        let diff = self.pred.detach() - self.target.detach();
        let per_element = scale / self.pred.numel().max(1) as f64;
        let mut grad = match self.kind {
            LossKind::Mse => diff * (2.0 * per_element),
            LossKind::L1 => diff.sign() * per_element,
        };
        if let Some(w) = &self.weights {
            let mut shape = vec![1i64; grad.dim()];
            shape[0] = w.size()[0];
            grad *= w.detach().to_kind(grad.kind()).reshape(&shape[..]);
        }
        grad
    }
}

/// The Gaussian diffusion loss: x_t = √ᾱ x₀ + √(1−ᾱ) ε, target per `prediction`, optional
/// Min-SNR-γ weighting; `model(x_t, t)` is the network. [`RegressionLoss::value`] is the
/// scalar mean loss.
pub fn gaussian_loss(
    inputs: &GaussianLossInputs<'_>,
    forward: &ForwardProcess,
    prediction: Prediction,
    loss: LossKind,
    min_snr_gamma: Option<f64>,
    model: impl FnOnce(&Tensor, &Tensor) -> Tensor,
) -> RegressionLoss {
    let (x_t, target) = forward.q_sample_and_target(prediction, inputs.x0, inputs.t, inputs.noise);
    let pred = model(&x_t, inputs.t);
    let weights =
        min_snr_gamma.map(|gamma| min_snr_weight(&forward.snr(inputs.t), gamma, prediction));
    RegressionLoss {
        pred,
        target,
        kind: loss,
        weights,
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
) -> RegressionLoss {
    let x_t = degradation.degrade(x0, t, Some(noise));
    let pred = model(&x_t, t);
    RegressionLoss {
        pred,
        target: x0.shallow_clone(),
        kind: loss,
        weights: None,
    }
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
                    })
                    .value();
                assert!(perfect.double_value(&[]) < 1e-10, "{prediction:?}");
                let off = gaussian_loss(&inputs, &fp, prediction, LossKind::L1, gamma, |_, _| {
                    &target + 0.5
                })
                .value();
                assert!(off.double_value(&[]) > 0.01, "{prediction:?}");
            }
        }
    }

    /// The closed-form output gradient equals autograd's through `value`, for both loss kinds,
    /// with and without per-sample weights, scaled, and is exactly 0 where an absolute error is.
    #[test]
    fn closed_form_gradient_matches_autograd() {
        tch::manual_seed(4);
        let f = (Kind::Float, Device::Cpu);
        let target = Tensor::randn([5, 3, 2], f);
        let pred0 = Tensor::randn([5, 3, 2], f);
        // One element equal to its target: `|·|` has derivative 0 there in autograd.
        pred0
            .get(0)
            .get(0)
            .get(0)
            .copy_(&target.get(0).get(0).get(0));
        let weights = Tensor::rand([5], f) + 0.5;
        for kind in [LossKind::Mse, LossKind::L1] {
            for w in [None, Some(&weights)] {
                let pred = pred0.copy().set_requires_grad(true);
                let terms = RegressionLoss {
                    pred: pred.shallow_clone(),
                    target: target.shallow_clone(),
                    kind,
                    weights: w.map(Tensor::shallow_clone),
                };
                (terms.value() * 0.25).backward();
                let want = pred.grad();
                let got = terms.grad_pred(0.25);
                // The one-pass value and gradient (on a prediction without a graph) agree.
                let plain = RegressionLoss {
                    pred: pred0.copy(),
                    target: target.shallow_clone(),
                    kind,
                    weights: w.map(Tensor::shallow_clone),
                };
                let (value, fast) = plain.value_and_grad(0.25);
                let want_value = terms.value().double_value(&[]);
                assert!((value.double_value(&[]) - want_value).abs() <= 1e-6 * want_value);
                assert!(
                    fast.allclose(&want, 1e-6, 1e-9, false),
                    "{kind:?}: one-pass gradient"
                );
                assert!(!got.requires_grad());
                let diff = f64::try_from((&got - &want).abs().max()).unwrap();
                let scale = f64::try_from(want.abs().max()).unwrap();
                assert!(
                    diff <= 1e-6 * scale,
                    "{kind:?}, weighted {}: differs by {diff}",
                    w.is_some()
                );
                for g in [&got, &want] {
                    assert_eq!(
                        g.double_value(&[0, 0, 0]),
                        0.0,
                        "{kind:?}: at pred = target"
                    );
                }
            }
        }
    }
}
