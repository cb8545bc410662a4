//! Timestep and class embeddings.
//!
//! The timestep t enters the network as a sinusoidal code (Vaswani et al. 2017, §3.5, as used
//! by DDPM, Ho et al. 2020, App. B) passed through a two-layer MLP; a class label is a learned
//! embedding row added to that vector (Dhariwal & Nichol 2021, §4).

use difflab_schedulers::is_shared_timestep;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn, nn::Module};

use crate::params::ParamCount;
use crate::{init, ops};

/// How the sinusoidal timestep code is laid out (diffusers' `flip_sin_to_cos`, `freq_shift`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinusoidalConfig {
    /// Put the cosines first: `[cos, sin]` instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// `s` in the frequency exponent `−ln(P)·i/(half − s)` (diffusers' `downscale_freq_shift`).
    pub freq_shift: f64,
    /// `P`, the longest period (10000 in the Transformer and DDPM).
    pub max_period: f64,
}

impl Default for SinusoidalConfig {
    fn default() -> Self {
        Self {
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            max_period: 10_000.0,
        }
    }
}

/// Sinusoidal embedding of `t` (`[B]`, integer or float) into `[B, dim]` float32:
/// with `half = dim / 2` and `f_i = exp(−ln(P)·i / (half − s))`, `i = 0..half`,
/// the code is `[sin(t·f), cos(t·f)]` (or `[cos, sin]` when flipped), zero-padded by one column
/// when `dim` is odd. Computed in float32 in the same order as diffusers'
/// `get_timestep_embedding`, so the codes agree bit for bit. A `t` the whole batch shares
/// ([`is_shared_timestep`]) gives a single row `[1, dim]`, for the caller to broadcast.
pub fn sinusoidal_embedding(t: &Tensor, dim: i64, config: &SinusoidalConfig) -> Tensor {
    // A timestep the whole batch shares (as samplers pass it) is embedded once: `[1, dim]`,
    // which every use broadcasts, so the time MLP and each block's projection run on one row.
    let t = if is_shared_timestep(t) {
        t.narrow(0, 0, 1)
    } else {
        t.shallow_clone()
    };
    // With `half` a multiple of 32 every element goes through libtorch's vectorised `sin` and
    // `cos` (a remainder of fewer than 32 elements would take its scalar loop, which can differ
    // in the last bit), so a table of every integer timestep's code holds the bits computing
    // each code alone gives, and integer timesteps may be copied from it.
    let half = dim / 2;
    if half > 0 && half % 32 == 0 && t.kind() == Kind::Int64 {
        let key = (
            "sinusoid-table",
            [
                dim as u64,
                u64::from(config.flip_sin_to_cos),
                config.freq_shift.to_bits(),
                config.max_period.to_bits(),
            ],
        );
        return ops::tabulated(&t, key, dim, |t| code(t, dim, config));
    }
    code(&t, dim, config)
}

/// The code of [`sinusoidal_embedding`] as libtorch computes it.
fn code(t: &Tensor, dim: i64, config: &SinusoidalConfig) -> Tensor {
    let half = dim / 2;
    let key = (
        "sinusoid-frequencies",
        [
            half as u64,
            config.max_period.to_bits(),
            config.freq_shift.to_bits(),
            ops::device_code(t.device()),
        ],
    );
    let freqs = ops::memoized(key, || {
        let exponent = Tensor::arange(half, (Kind::Float, t.device())) * (-config.max_period.ln());
        (exponent / (half as f64 - config.freq_shift))
            .exp()
            .unsqueeze(0)
    });
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs;
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if config.flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

/// The timestep MLP: `linear_2(SiLU(linear_1(code)))`, mapping the sinusoidal code to the
/// embedding every residual block reads (diffusers `TimestepEmbedding`: `linear_1`, `linear_2`).
/// The same two-layer MLP embeds the UNet's multi-hot label vector and the low-resolution
/// noise level's sinusoidal code.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    /// `in_dim` → `out_dim` → `out_dim`, parameters under `vs` (`linear_1.*`, `linear_2.*`).
    pub fn new(vs: &nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self {
            linear_1: init::linear(vs / "linear_1", in_dim, out_dim),
            linear_2: init::linear(vs / "linear_2", out_dim, out_dim),
        }
    }

    /// The two layers, `(linear_1, linear_2)` (for hand-written backward passes).
    #[cfg(feature = "kernels")]
    pub(crate) fn linears(&self) -> (&nn::Linear, &nn::Linear) {
        (&self.linear_1, &self.linear_2)
    }

    /// `[B, in_dim]` → `[B, out_dim]`.
    pub fn forward(&self, code: &Tensor) -> Tensor {
        self.linear_2
            .forward(&ops::silu_owned(self.linear_1.forward(code)))
    }
}

impl ParamCount for TimestepEmbedding {
    fn param_count(&self) -> i64 {
        self.linear_1.param_count() + self.linear_2.param_count()
    }
}

/// A learned class embedding `E[y]` (`weight` of shape `[rows, dim]`), added to the time
/// embedding. With a null class (for classifier-free guidance, Ho & Salimans 2022) the last row
/// is the "no label" embedding.
#[derive(Debug)]
pub struct ClassEmbedding {
    embedding: nn::Embedding,
    rows: i64,
}

impl ClassEmbedding {
    /// `rows` embeddings of width `dim`, parameter `weight` under `vs`.
    pub fn new(vs: &nn::Path, rows: i64, dim: i64) -> Self {
        Self {
            embedding: init::embedding(vs, rows, dim),
            rows,
        }
    }

    /// Number of rows (classes, plus the null class if any).
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// `[B]` int64 labels in `0..rows` → `[B, dim]`.
    pub fn forward(&self, labels: &Tensor) -> Tensor {
        self.embedding.forward(labels)
    }
}

impl ParamCount for ClassEmbedding {
    fn param_count(&self) -> i64 {
        self.embedding.param_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_matches_closed_form() {
        let t = Tensor::from_slice(&[0i64, 7, 999]);
        let cfg = SinusoidalConfig {
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            max_period: 10_000.0,
        };
        let emb = sinusoidal_embedding(&t, 6, &cfg);
        assert_eq!(emb.size(), [3, 6]);
        for (row, tv) in [0.0f64, 7.0, 999.0].iter().enumerate() {
            for i in 0..3 {
                let f = (-(10_000f64.ln()) * i as f64 / 2.0).exp();
                let s = emb.double_value(&[row as i64, i]);
                let c = emb.double_value(&[row as i64, i + 3]);
                assert!((s - (tv * f).sin()).abs() < 1e-3, "sin {row} {i}: {s}");
                assert!((c - (tv * f).cos()).abs() < 1e-3, "cos {row} {i}: {c}");
            }
        }
        // flipped puts cos first; odd width pads a zero column
        let flipped = sinusoidal_embedding(&t, 7, &SinusoidalConfig::default());
        assert_eq!(flipped.size(), [3, 7]);
        assert_eq!(flipped.double_value(&[0, 0]), 1.0);
        assert_eq!(flipped.double_value(&[2, 6]), 0.0);
    }

    /// The frequency row is cached: alternating layouts, periods and widths must each still
    /// get their own frequencies `exp(−ln(P)·i/(half − s))`.
    #[test]
    fn cached_frequencies_follow_the_config() {
        let t = Tensor::from_slice(&[3i64, 250]);
        let configs = [(0.0, 10_000.0), (1.0, 10_000.0), (0.0, 100.0)];
        for round in 0..2 {
            for &(shift, period) in &configs {
                for dim in [6i64, 8] {
                    let cfg = SinusoidalConfig {
                        flip_sin_to_cos: false,
                        freq_shift: shift,
                        max_period: period,
                    };
                    let emb = sinusoidal_embedding(&t, dim, &cfg);
                    let half = dim / 2;
                    for (row, tv) in [3.0f64, 250.0].iter().enumerate() {
                        for i in 0..half {
                            let f = (-(period.ln()) * i as f64 / (half as f64 - shift)).exp();
                            let s = emb.double_value(&[row as i64, i]);
                            assert!(
                                (s - (tv * f).sin()).abs() < 1e-3,
                                "round {round}, shift {shift}, period {period}, dim {dim}: {s}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Codes copied from the table (where difflab's kernels are on) are the bits the direct
    /// computation gives, for batches of every size (the direct path's tail handling depends on
    /// the element count), both layouts, odd widths, a table that grows, and timesteps the
    /// table does not hold.
    #[test]
    fn tabulated_codes_equal_the_computed_ones_bit_for_bit() {
        let bits = |t: &Tensor| -> Vec<u32> {
            Vec::<f32>::try_from(t.flatten(0, -1))
                .expect("f32")
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        for (dim, flip) in [(256, true), (64, false), (65, true), (48, true)] {
            let cfg = SinusoidalConfig {
                flip_sin_to_cos: flip,
                ..SinusoidalConfig::default()
            };
            for batch in [2_i64, 7, 25, 1000] {
                let t = Tensor::randint(1000, [batch], (Kind::Int64, tch::Device::Cpu));
                let got = sinusoidal_embedding(&t, dim, &cfg);
                assert_eq!(bits(&got), bits(&code(&t, dim, &cfg)), "{dim} {batch}");
            }
            for steps in [&[5_000_i64, 3, 16_383][..], &[16_384, 2], &[-1, 4]] {
                let t = Tensor::from_slice(steps);
                let got = sinusoidal_embedding(&t, dim, &cfg);
                assert_eq!(bits(&got), bits(&code(&t, dim, &cfg)), "{steps:?}");
            }
        }
    }

    #[test]
    fn a_shared_timestep_is_embedded_once_with_the_same_values() {
        let cfg = SinusoidalConfig::default();
        let rows = sinusoidal_embedding(&Tensor::from_slice(&[417i64, 417, 417]), 8, &cfg);
        // Broadcast (stride 0), as the samplers pass it: one row, equal to each per-row code.
        let shared = Tensor::from_slice(&[417i64]).expand([3], false);
        assert!(is_shared_timestep(&shared));
        let once = sinusoidal_embedding(&shared, 8, &cfg);
        assert_eq!(once.size(), [1, 8]);
        assert!(rows.equal(&once.expand([3, 8], false)));
        // A materialised [B] is embedded row by row, even when its values happen to agree.
        assert!(!is_shared_timestep(&Tensor::from_slice(&[
            417i64, 417, 417
        ])));
        assert!(is_shared_timestep(&Tensor::from_slice(&[417i64])));
    }
}
