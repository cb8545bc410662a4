//! Which training timesteps a few-step sampler visits, and how a batch's timestep tensor says
//! that every example shares one.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::ScheduleError;

/// How N inference steps are laid over T training steps (diffusers `timestep_spacing`; the
/// trade-offs are discussed in Lin et al. 2023, Table 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// t_i = i·⌊T/N⌋ + offset (DDIM paper, diffusers default). Never visits t = T−1.
    #[default]
    Leading,
    /// t_i = round(T − i·T/N) − 1: always starts at t = T−1 (needed with zero-terminal-SNR).
    Trailing,
    /// t_i = round(i·(T−1)/(N−1)): both ends visited.
    Linspace,
}

impl std::str::FromStr for TimestepSpacing {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "linspace" => Ok(Self::Linspace),
            _ => Err(ScheduleError::invalid(
                "spacing",
                s,
                "expected one of leading, trailing, linspace",
            )),
        }
    }
}

/// The `n` timesteps visited by a sampler over a `t`-step schedule, in descending order, exactly
/// as diffusers' DDIM/DDPM `set_timesteps` computes them (numpy's round-half-to-even included).
/// `steps_offset` applies to `leading` spacing only (as in diffusers); a non-zero offset with
/// another spacing is rejected rather than silently ignored.
pub fn inference_timesteps(
    t: usize,
    n: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<i64>, ScheduleError> {
    if n == 0 || n > t {
        return Err(ScheduleError::invalid(
            "sampler.steps",
            n,
            format!("must be in [1, {t}] (the schedule's training timesteps)"),
        ));
    }
    let (tf, nf) = (t as f64, n as f64);
    let ts: Vec<i64> = match spacing {
        TimestepSpacing::Leading => {
            let ratio = t / n;
            let ts: Vec<i64> = (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as i64)
                .collect();
            if ts[0] >= t as i64 {
                return Err(ScheduleError::invalid(
                    "sampler.steps_offset",
                    steps_offset,
                    format!("pushes the first timestep to {} >= T = {t}", ts[0]),
                ));
            }
            ts
        }
        TimestepSpacing::Trailing | TimestepSpacing::Linspace if steps_offset != 0 => {
            return Err(ScheduleError::invalid(
                "sampler.steps_offset",
                steps_offset,
                "applies to leading spacing only; set it to 0",
            ));
        }
        TimestepSpacing::Trailing => {
            let ratio = tf / nf;
            (0..n)
                .map(|i| (tf - i as f64 * ratio).round_ties_even() as i64 - 1)
                .collect()
        }
        TimestepSpacing::Linspace => {
            if n == 1 {
                vec![0]
            } else {
                let step = (tf - 1.0) / (nf - 1.0);
                (0..n)
                    .rev()
                    .map(|i| {
                        if i == n - 1 {
                            t as i64 - 1
                        } else {
                            (i as f64 * step).round_ties_even() as i64
                        }
                    })
                    .collect()
            }
        }
    };
    Ok(ts)
}

/// A timestep shared by a batch of `b`: `[b]` int64 with stride 0 (one element broadcast), the
/// form samplers pass to a denoiser. Networks recognise it ([`is_shared_timestep`]) and compute
/// the time embedding for one row instead of `b`.
pub fn shared_timestep(t: i64, b: i64, device: Device) -> Tensor {
    Tensor::full([1], t, (Kind::Int64, device)).expand([b], false)
}

/// Whether the `[B]` tensor `t` holds one value for the whole batch by construction: a single
/// element, or one broadcast with stride 0 (as [`shared_timestep`] makes it, and `[1]`/scalar
/// inputs take after the models' input checks). Reads no values, so it costs nothing on any
/// device. The samplers and the networks both decide with this one function.
pub fn is_shared_timestep(t: &Tensor) -> bool {
    t.dim() == 1 && (t.size()[0] == 1 || t.stride()[0] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_timestep_is_one_broadcast_element_and_is_recognised() {
        let t = shared_timestep(417, 3, Device::Cpu);
        assert_eq!(t.size(), [3]);
        assert_eq!(t.stride(), [0]);
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), [417, 417, 417]);
        assert!(is_shared_timestep(&t));
        // A materialised [B] is not, even when its values happen to agree; one element is.
        assert!(!is_shared_timestep(&Tensor::from_slice(&[
            417i64, 417, 417
        ])));
        assert!(is_shared_timestep(&Tensor::from_slice(&[417i64])));
        assert!(!is_shared_timestep(&Tensor::from(417i64)));
    }
}
