//! Pixelation: area downsampling followed by nearest upsampling (super-resolution degradation).

use tch::Tensor;

use super::host_levels;
use crate::{Degradation, ScheduleError};

/// D(x₀, t) = up_nearest(down_area(x₀, s_t), H×W): the image is averaged over blocks
/// (`adaptive_avg_pool2d`) to s_t(H) × s_t(W) pixels, then each block is replicated back to
/// H × W (Bansal et al. 2022, "Cold Diffusion", §4.3, super-resolution).
///
/// The size shrinks geometrically per axis, s_t(n) = round(n · (m/n)^{t/T}) clamped to [m, n],
/// with m = `min_size`: s_0 = n (exact identity) and s_T = m, so the image at T has at most
/// m² distinct values per channel. An axis already no larger than m is left as is. Sizes are
/// integers, so neighbouring levels can coincide when T is large compared with log₂(n/m).
///
/// Samples are grouped by level (one pool per distinct level in the batch), so a batch may mix
/// levels; levels outside [0, T] are clamped. Differentiable in x₀ (the size choice is not).
#[derive(Debug, Clone)]
pub struct Pixelate {
    steps: i64,
    min_size: i64,
}

impl Pixelate {
    /// A pixelation with `steps` levels, down to `min_size` × `min_size` at the last one.
    pub fn new(steps: i64, min_size: i64) -> Result<Self, ScheduleError> {
        if steps < 1 {
            return Err(ScheduleError::invalid(
                "degradation.steps",
                steps,
                "must be >= 1",
            ));
        }
        if min_size < 1 {
            return Err(ScheduleError::invalid(
                "degradation.min_size",
                min_size,
                "must be >= 1",
            ));
        }
        Ok(Self { steps, min_size })
    }

    /// s_t(n): the pooled size of an axis of `n` pixels at `level` (clamped to [0, T]).
    pub fn size(&self, level: i64, n: i64) -> i64 {
        let m = self.min_size;
        if n <= m {
            return n;
        }
        let frac = level.clamp(0, self.steps) as f64 / self.steps as f64;
        let s = (n as f64 * (m as f64 / n as f64).powf(frac)).round() as i64;
        s.clamp(m, n)
    }
}

impl Degradation for Pixelate {
    fn name(&self) -> &'static str {
        "pixelate"
    }

    fn num_steps(&self) -> i64 {
        self.steps
    }

    fn degrade(&self, x0: &Tensor, t: &Tensor, _noise: Option<&Tensor>) -> Tensor {
        let (_, _, h, w) = x0
            .size4()
            .expect("pixelate expects x0 of shape [B, C, H, W]");
        let levels = host_levels(t, self.steps);
        let mut distinct = levels.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut out = x0.copy();
        for level in distinct {
            let (sh, sw) = (self.size(level, h), self.size(level, w));
            if sh == h && sw == w {
                continue;
            }
            let idx: Vec<i64> = (0..levels.len() as i64)
                .filter(|&i| levels[i as usize] == level)
                .collect();
            let idx = Tensor::from_slice(&idx).to_device(x0.device());
            let degraded = x0
                .index_select(0, &idx)
                .adaptive_avg_pool2d([sh, sw])
                .upsample_nearest2d([h, w], None, None);
            out = out.index_copy(0, &idx, &degraded);
        }
        out
    }
}
