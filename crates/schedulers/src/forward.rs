//! The forward (noising) process q(x_t | x_0) on a device, for per-sample timesteps.

use tch::{Device, Kind, Tensor};

use crate::{Prediction, Schedule};

/// √ᾱ_t and √(1−ᾱ_t) tables on a device, gathered per sample.
///
/// q(x_t | x₀) = N(√ᾱ_t x₀, (1−ᾱ_t) I) (Ho et al. 2020, eq. 4).
#[derive(Debug)]
pub struct ForwardProcess {
    sqrt_alpha_bar: Tensor,
    sqrt_one_minus_alpha_bar: Tensor,
    alpha_bar: Tensor,
}

impl ForwardProcess {
    /// Upload the schedule's tables (as f32) to `device`.
    pub fn new(schedule: &dyn Schedule, device: Device) -> Self {
        let ab: Vec<f64> = (0..schedule.num_train_timesteps())
            .map(|t| schedule.alpha_bar(t))
            .collect();
        let to = |v: Vec<f64>| {
            Tensor::from_slice(&v)
                .to_kind(Kind::Float)
                .to_device(device)
        };
        Self {
            sqrt_alpha_bar: to(ab.iter().map(|a| a.sqrt()).collect()),
            sqrt_one_minus_alpha_bar: to(ab.iter().map(|a| (1.0 - a).max(0.0).sqrt()).collect()),
            alpha_bar: to(ab),
        }
    }

    /// T.
    pub fn num_train_timesteps(&self) -> i64 {
        self.alpha_bar.size()[0]
    }

    /// (√ᾱ_t, √(1−ᾱ_t)) for each sample, shaped `[B, 1, …, 1]` to broadcast against `like`.
    /// `t` is an int64 tensor of shape `[B]`.
    pub fn coefficients(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        let shape = broadcast_shape(t, like);
        let t = t.to_device(self.alpha_bar.device());
        (
            self.sqrt_alpha_bar.index_select(0, &t).reshape(&shape[..]),
            self.sqrt_one_minus_alpha_bar
                .index_select(0, &t)
                .reshape(&shape[..]),
        )
    }

    /// ᾱ_t per sample, shape `[B]`.
    pub fn alpha_bar(&self, t: &Tensor) -> Tensor {
        self.alpha_bar
            .index_select(0, &t.to_device(self.alpha_bar.device()))
    }

    /// SNR(t) = ᾱ/(1−ᾱ) per sample, shape `[B]` (used by Min-SNR loss weighting).
    pub fn snr(&self, t: &Tensor) -> Tensor {
        let ab = self.alpha_bar(t);
        &ab / (1.0 - &ab)
    }

    /// x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε for per-sample `t`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        let (a, s) = self.coefficients(t, x0);
        x0 * &a + noise * &s
    }

    /// [`ForwardProcess::q_sample`] and [`ForwardProcess::target`] of one training example
    /// set, `(x_t, target)`, looking the coefficients up once.
    pub fn q_sample_and_target(
        &self,
        prediction: Prediction,
        x0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
    ) -> (Tensor, Tensor) {
        #[cfg(feature = "kernels")]
        if difflab_kernels::enabled()
            && let Some((x_t, v)) = difflab_kernels::q_sample::q_sample_and_velocity(
                x0,
                t,
                noise,
                &self.sqrt_alpha_bar,
                &self.sqrt_one_minus_alpha_bar,
                prediction == Prediction::V,
            )
        {
            let target = v.unwrap_or_else(|| match prediction {
                Prediction::X0 => x0.shallow_clone(),
                _ => noise.shallow_clone(),
            });
            return (x_t, target);
        }
        let (a, s) = self.coefficients(t, x0);
        (x0 * &a + noise * &s, prediction.target(x0, noise, &a, &s))
    }

    /// The velocity v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022).
    pub fn velocity(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        self.target(Prediction::V, x0, t, noise)
    }

    /// The training target of `prediction` for per-sample `t`.
    pub fn target(
        &self,
        prediction: Prediction,
        x0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
    ) -> Tensor {
        let (a, s) = self.coefficients(t, x0);
        prediction.target(x0, noise, &a, &s)
    }
}

/// `[B, 1, …, 1]` with as many dims as `like`.
pub(crate) fn broadcast_shape(t: &Tensor, like: &Tensor) -> Vec<i64> {
    let mut shape = vec![1i64; like.dim()];
    shape[0] = t.size()[0];
    shape
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScheduleConfig;

    /// `q_sample_and_target` (through difflab's one-pass kernel where it is compiled in) gives
    /// the same bits as the tensor operations, for every prediction, on images and on vectors,
    /// and for inputs the kernel does not take (steps out of range, other layouts).
    #[test]
    fn one_pass_matches_the_tensor_operations_bit_for_bit() {
        let schedule = ScheduleConfig::default().build().expect("schedule");
        let fp = ForwardProcess::new(&schedule, Device::Cpu);
        tch::manual_seed(5);
        for shape in [vec![4_i64, 3, 5, 5], vec![6, 2]] {
            let f = (Kind::Float, Device::Cpu);
            let x0 = Tensor::randn(&shape[..], f);
            let noise = Tensor::randn(&shape[..], f);
            let t = Tensor::randint(1000, [shape[0]], (Kind::Int64, Device::Cpu));
            let strided = (x0.transpose(0, -1), noise.transpose(0, -1));
            let t_strided = Tensor::zeros([strided.0.size()[0]], (Kind::Int64, Device::Cpu));
            for prediction in [Prediction::Eps, Prediction::X0, Prediction::V] {
                for (x0, noise, t) in [(&x0, &noise, &t), (&strided.0, &strided.1, &t_strided)] {
                    let (x_t, target) = fp.q_sample_and_target(prediction, x0, t, noise);
                    let (a, s) = fp.coefficients(t, x0);
                    assert!(
                        x_t.equal(&(x0 * &a + noise * &s)),
                        "{prediction:?} {shape:?}"
                    );
                    let want = prediction.target(x0, noise, &a, &s);
                    assert!(target.equal(&want), "{prediction:?} {shape:?}");
                }
            }
        }
    }
}
