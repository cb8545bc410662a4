//! Expert ensembles (eDiff-I, Balaji et al. 2022): several denoisers, each responsible for one
//! timestep interval [lo, hi), seen by samplers as one [`Denoiser`].
//!
//! The ensemble is just another denoiser: samplers, guidance and cascades use it unchanged.
//! Routing is per sample, so a batch whose samples sit at different timesteps (training-style
//! batches, or samplers that mix levels) reaches the right expert for each sample.
#![forbid(unsafe_code)]

use difflab_samplers::{Conditioning, Denoiser};
use difflab_schedulers::Prediction;
use tch::Tensor;

/// Why a set of experts does not form an ensemble; names the experts involved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnsembleError {
    /// No experts.
    #[error("an ensemble needs at least one expert")]
    Empty,
    /// An interval with lo >= hi or outside [0, T).
    #[error("expert {name}: interval [{lo}, {hi}) is empty or outside [0, {t})")]
    BadInterval {
        /// The expert.
        name: String,
        /// Its lower bound.
        lo: i64,
        /// Its upper bound (exclusive).
        hi: i64,
        /// The number of training timesteps.
        t: i64,
    },
    /// Two experts claim the same timesteps.
    #[error("experts {a} and {b} overlap on [{lo}, {hi})")]
    Overlap {
        /// First expert.
        a: String,
        /// Second expert.
        b: String,
        /// Start of the shared timesteps.
        lo: i64,
        /// End (exclusive).
        hi: i64,
    },
    /// Timesteps no expert covers.
    #[error("no expert covers timesteps [{lo}, {hi}){}", after.as_ref().map(|a| format!(" (after expert {a})")).unwrap_or_default())]
    Gap {
        /// Start of the gap.
        lo: i64,
        /// End (exclusive).
        hi: i64,
        /// The expert just below the gap, if any.
        after: Option<String>,
    },
    /// Experts trained for different objectives.
    #[error(
        "experts {a} ({pa:?}) and {b} ({pb:?}) predict different things; all experts must share the objective"
    )]
    Prediction {
        /// First expert.
        a: String,
        /// Its prediction type.
        pa: Prediction,
        /// Second expert.
        b: String,
        /// Its prediction type.
        pb: Prediction,
    },
}

/// Check that named intervals `(name, lo, hi)` tile `[0, num_timesteps)` exactly: each is
/// non-empty and inside the range, and sorted by `lo` they leave no gap and do not overlap. The
/// error names the experts involved. Usable before any weights are loaded.
pub fn check_tiling(
    intervals: &[(&str, i64, i64)],
    num_timesteps: i64,
) -> Result<(), EnsembleError> {
    if intervals.is_empty() {
        return Err(EnsembleError::Empty);
    }
    for &(name, lo, hi) in intervals {
        if lo >= hi || lo < 0 || hi > num_timesteps {
            return Err(EnsembleError::BadInterval {
                name: name.to_string(),
                lo,
                hi,
                t: num_timesteps,
            });
        }
    }
    let mut sorted = intervals.to_vec();
    sorted.sort_by_key(|&(_, lo, _)| lo);
    let mut covered = 0;
    let mut previous: Option<(&str, i64, i64)> = None;
    for &(name, lo, hi) in &sorted {
        if lo > covered {
            return Err(EnsembleError::Gap {
                lo: covered,
                hi: lo,
                after: previous.map(|p| p.0.to_string()),
            });
        }
        if let Some((p_name, _, p_hi)) = previous
            && lo < p_hi
        {
            return Err(EnsembleError::Overlap {
                a: p_name.to_string(),
                b: name.to_string(),
                lo,
                hi: p_hi.min(hi),
            });
        }
        covered = hi;
        previous = Some((name, lo, hi));
    }
    if covered < num_timesteps {
        return Err(EnsembleError::Gap {
            lo: covered,
            hi: num_timesteps,
            after: previous.map(|p| p.0.to_string()),
        });
    }
    Ok(())
}

/// One expert: a denoiser responsible for timesteps in `[lo, hi)`.
pub struct Expert<D> {
    /// A name for messages (e.g. the run directory).
    pub name: String,
    /// First timestep it handles.
    pub lo: i64,
    /// One past the last timestep it handles.
    pub hi: i64,
    /// The network.
    pub denoiser: D,
}

/// Experts whose intervals tile [0, T) exactly, routed by timestep.
pub struct ExpertEnsemble<D> {
    experts: Vec<Expert<D>>,
    prediction: Prediction,
    num_timesteps: i64,
}

impl<D: Denoiser> ExpertEnsemble<D> {
    /// Validate that the intervals cover [0, `num_timesteps`) with no gap or overlap and that all
    /// experts share a prediction type.
    pub fn new(mut experts: Vec<Expert<D>>, num_timesteps: i64) -> Result<Self, EnsembleError> {
        let intervals: Vec<(&str, i64, i64)> = experts
            .iter()
            .map(|e| (e.name.as_str(), e.lo, e.hi))
            .collect();
        check_tiling(&intervals, num_timesteps)?;
        experts.sort_by_key(|e| e.lo);
        let first = &experts[0];
        for e in &experts[1..] {
            if e.denoiser.prediction() != first.denoiser.prediction() {
                return Err(EnsembleError::Prediction {
                    a: first.name.clone(),
                    pa: first.denoiser.prediction(),
                    b: e.name.clone(),
                    pb: e.denoiser.prediction(),
                });
            }
        }
        let prediction = first.denoiser.prediction();
        Ok(Self {
            experts,
            prediction,
            num_timesteps,
        })
    }

    /// The expert responsible for timestep `t` (clamped into the covered range).
    pub fn expert_for(&self, t: i64) -> &Expert<D> {
        self.experts
            .iter()
            .find(|e| t < e.hi)
            .unwrap_or_else(|| self.experts.last().expect("non-empty"))
    }

    /// The experts, sorted by interval.
    pub fn experts(&self) -> &[Expert<D>] {
        &self.experts
    }
}

impl<D: Denoiser> Denoiser for ExpertEnsemble<D> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        let b = x_t.size()[0];
        let t = if t.numel() == 1 && b > 1 {
            t.reshape([1]).expand([b], false)
        } else {
            t.reshape([-1])
        };
        let (tmin, tmax) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        // Sampling: the whole batch shares t, so one expert answers.
        if self.expert_for(tmin).lo == self.expert_for(tmax).lo {
            return self.expert_for(tmin).denoiser.forward(x_t, &t, cond);
        }
        // Mixed timesteps: each expert answers for its samples, scattered back in place.
        let mut out: Option<Tensor> = None;
        // Route on t clamped into [0, T), like `expert_for`; the experts see the real t.
        let routed = t.clamp(0, self.num_timesteps - 1);
        for e in &self.experts {
            let mask = routed.ge(e.lo).logical_and(&routed.lt(e.hi));
            let idx = mask.nonzero().reshape([-1]);
            if idx.numel() == 0 {
                continue;
            }
            let sub_cond = cond.index_select(&idx);
            let y = e.denoiser.forward(
                &x_t.index_select(0, &idx),
                &t.index_select(0, &idx),
                &sub_cond,
            );
            let dst = out.get_or_insert_with(|| {
                let mut shape = y.size();
                shape[0] = b;
                Tensor::zeros(&shape[..], (y.kind(), y.device()))
            });
            let _ = dst.index_copy_(0, &idx, &y);
        }
        out.expect("the experts tile [0, T), so every sample was routed")
    }
}
