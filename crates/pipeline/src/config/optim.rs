//! The optimizer's config sections: `training.optimizer` (Adam/AdamW), `training.ema` and
//! `training.lr_schedule` (warmup, then constant, cosine or step decay; the rate is a pure
//! function of the step, so a resumed run needs nothing but the step).

use serde::{Deserialize, Serialize};

/// The `Err` of a config check: `invalid <key> = <value>: <why>`.
pub(crate) fn invalid(key: &str, value: impl std::fmt::Display, why: &str) -> Result<(), String> {
    Err(format!("invalid {key} = {value}: {why}"))
}

/// Which update rule AdamW applies; they differ only in how `weight_decay` acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// AdamW: weight decay applied to the weights, decoupled from the gradient statistics,
    /// `θ ← θ·(1 − lr·λ)` (Loshchilov & Hutter 2019). `torch.optim.AdamW`.
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    /// Adam: weight decay as an L2 penalty added to the gradient, `g ← g + λ·θ`, which then
    /// passes through the moment estimates (Kingma & Ba 2015). `torch.optim.Adam`. With
    /// `weight_decay: 0` (the default) both kinds give identical updates.
    #[serde(rename = "adam")]
    Adam,
}

/// The `optimizer:` section: Adam/AdamW hyper-parameters. `lr` is the base rate that the
/// schedule ([`LrConfig`]) scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `adamw` (default) or `adam`.
    pub kind: OptimizerKind,
    /// Base learning rate (default `2e-4`, the DDPM CIFAR-10 rate of Ho et al. 2020).
    pub lr: f64,
    /// `[β₁, β₂]`, the decay rates of the first and second moment estimates (default
    /// `[0.9, 0.999]`).
    pub betas: [f64; 2],
    /// `ε` added to `√v̂` in the denominator (default `1e-8`).
    pub eps: f64,
    /// Weight decay `λ` (default `0.0`): decoupled for `adamw`, L2 for `adam`.
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: 2e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Range checks; the message names the key (`optimizer.<key>`) and value.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("optimizer.lr", self.lr, "must be > 0");
        }
        for (i, beta) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(beta) {
                return invalid(&format!("optimizer.betas[{i}]"), beta, "must be in [0, 1)");
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return invalid("optimizer.eps", self.eps, "must be > 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid("optimizer.weight_decay", self.weight_decay, "must be >= 0");
        }
        Ok(())
    }
}

/// The `ema:` section.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Maximum (and, without warmup, constant) decay (default 0.9999, Ho et al. 2020).
    pub decay: f64,
    /// Warm the decay up as `1 − (1 + e/inv_gamma)^(−power)` (default true).
    pub warmup: bool,
    /// Warmup `γ` (default 1.0).
    pub inv_gamma: f64,
    /// Warmup power `p` (default 2/3, diffusers' default; 3/4 suits shorter runs).
    pub power: f64,
    /// Lower clamp of the decay once averaging has started (default 0.0).
    pub min_decay: f64,
    /// Average every N steps (default 1); the steps in between leave the EMA as it is.
    pub update_every: u64,
    /// Until this step the EMA is a plain copy of the weights (default 0), as diffusers'
    /// `update_after_step`.
    pub start_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            warmup: true,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
            min_decay: 0.0,
            update_every: 1,
            start_step: 0,
        }
    }
}

impl EmaConfig {
    /// Range checks; the message names the key (`ema.<key>`) and value.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.decay) {
            return invalid("ema.decay", self.decay, "must be in [0, 1)");
        }
        if !(0.0..=self.decay).contains(&self.min_decay) {
            return invalid("ema.min_decay", self.min_decay, "must be in [0, decay]");
        }
        if !(self.inv_gamma > 0.0 && self.inv_gamma.is_finite()) {
            return invalid("ema.inv_gamma", self.inv_gamma, "must be > 0");
        }
        if !(self.power > 0.0 && self.power.is_finite()) {
            return invalid("ema.power", self.power, "must be > 0");
        }
        if self.update_every == 0 {
            return invalid("ema.update_every", 0, "must be >= 1");
        }
        Ok(())
    }
}

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
