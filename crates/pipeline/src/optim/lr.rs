//! Learning-rate schedules: linear warmup, then constant, cosine (Loshchilov & Hutter 2017,
//! SGDR without restarts) or step decay (PyTorch's `StepLR`).
//!
//! The rate is a pure function of the step, so a resumed run needs nothing but the step.

use serde::{Deserialize, Serialize};

/// What follows the warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr = base`.
    #[default]
    Constant,
    /// Half a cosine from `base` down to `min_lr_ratio·base` at the last step:
    /// `lr = base·(r + (1 − r)·½(1 + cos(π·p)))`, `p = (step − warmup)/(total − warmup)`
    /// (Loshchilov & Hutter 2017; diffusers' `get_cosine_schedule_with_warmup` when `r = 0`).
    Cosine,
    /// `lr = base·γ^⌊(step − warmup)/step_size⌋` (PyTorch's `StepLR`, counted from the end of
    /// warmup).
    Step,
}

/// The `lr_schedule:` section: warmup then a [`LrSchedule`], evaluated by [`LrConfig::lr_at`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LrConfig {
    /// Steps of linear warmup from 0 to the base rate (default 0: none).
    pub warmup_steps: u64,
    /// `constant` (default), `cosine` or `step`.
    pub schedule: LrSchedule,
    /// Cosine floor as a fraction `r` of the base rate (default 0.0).
    pub min_lr_ratio: f64,
    /// Step decay: steps between decays (default 1000).
    pub step_size: u64,
    /// Step decay: factor `γ` applied every `step_size` steps (default 0.1, as `StepLR`).
    pub gamma: f64,
}

impl Default for LrConfig {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            min_lr_ratio: 0.0,
            step_size: 1000,
            gamma: 0.1,
        }
    }
}

impl LrConfig {
    /// Range checks; the message names the key (`lr_schedule.<key>`) and value.
    pub fn validate(&self) -> Result<(), String> {
        use super::invalid;
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return invalid(
                "lr_schedule.min_lr_ratio",
                self.min_lr_ratio,
                "must be in [0, 1]",
            );
        }
        if self.schedule == LrSchedule::Step {
            if self.step_size == 0 {
                return invalid("lr_schedule.step_size", 0, "must be >= 1");
            }
            if !(self.gamma > 0.0 && self.gamma.is_finite()) {
                return invalid("lr_schedule.gamma", self.gamma, "must be > 0");
            }
        }
        Ok(())
    }

    /// The learning rate for the optimizer step taken after `step` completed steps (0 for the
    /// first), in a run of `total_steps`:
    ///
    /// - warmup, `step < warmup_steps`: `base·step/warmup_steps` (0 on the first step, as
    ///   diffusers' and transformers' warmup schedules);
    /// - then, with `s = step − warmup_steps`, the [`LrSchedule`] over the remaining
    ///   `total_steps − warmup_steps` steps: `base`; the cosine, reaching its floor at
    ///   `step = total_steps` and staying there beyond; or `base·γ^⌊s/step_size⌋`.
    pub fn lr_at(&self, base_lr: f64, step: u64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return base_lr * step as f64 / self.warmup_steps as f64;
        }
        let s = step - self.warmup_steps;
        match self.schedule {
            LrSchedule::Constant => base_lr,
            LrSchedule::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = (s as f64 / span as f64).min(1.0);
                let r = self.min_lr_ratio;
                base_lr * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
            }
            LrSchedule::Step => match s.checked_div(self.step_size) {
                Some(decays) => base_lr * self.gamma.powf(decays as f64),
                None => base_lr,
            },
        }
    }
}
