//! Exponential moving average of the weights (Polyak & Juditsky 1992), used for sampling by
//! DDPM (Ho et al. 2020, decay 0.9999) and every diffusion codebase since.
//!
//! `θ_ema ← d·θ_ema + (1 − d)·θ` after each optimizer step, with the decay `d` warming up as
//! in diffusers' `EMAModel` / `ema-pytorch`: `d(e) = 1 − (1 + e/γ)^(−p)` (γ = `inv_gamma`,
//! p = `power`), clamped to `[min_decay, decay]`, so early weights are forgotten quickly.
//! The decay depends only on the step, so the shadow weights (saved as `ema.safetensors`) are
//! the whole state.

use std::collections::BTreeMap;

use tch::{Tensor, nn::VarStore};

use difflab_pipeline::checkpoint::CheckpointError;
use difflab_pipeline::config::EmaConfig;

/// Shadow copies of a model's variables, held in a second [`VarStore`] built by the caller with
/// the same model (so the EMA weights can be sampled from like any model). Trainable variables
/// are averaged; the others (buffers) are copied.
pub struct Ema {
    config: EmaConfig,
    /// Variable names, sorted, with whether the model trains them.
    names: Vec<(String, bool)>,
}

impl Ema {
    /// Check that `ema_vs` has exactly the variables of `model_vs` with the same shapes, and
    /// copy the model's weights into it. (To resume, call this and then load the saved EMA
    /// weights into `ema_vs`.) The error names the first variable that differs.
    pub fn new(
        model_vs: &VarStore,
        ema_vs: &VarStore,
        config: &EmaConfig,
    ) -> Result<Self, CheckpointError> {
        let model: BTreeMap<String, Tensor> = model_vs.variables().into_iter().collect();
        let ema: BTreeMap<String, Tensor> = ema_vs.variables().into_iter().collect();
        let mismatch = |tensor: &str, reason: String| CheckpointError::Mismatch {
            file: "<ema variable store>".into(),
            tensor: tensor.to_string(),
            reason,
        };
        for (name, var) in &model {
            let Some(shadow) = ema.get(name) else {
                return Err(mismatch(name, "missing from the EMA model".into()));
            };
            if shadow.size() != var.size() {
                return Err(mismatch(
                    name,
                    format!(
                        "EMA shape {:?}, model shape {:?}",
                        shadow.size(),
                        var.size()
                    ),
                ));
            }
        }
        if let Some(name) = ema.keys().find(|name| !model.contains_key(*name)) {
            return Err(mismatch(
                name,
                "in the EMA model but not in the model".into(),
            ));
        }
        let _guard = tch::no_grad_guard();
        for (name, var) in &model {
            let mut shadow = ema[name].shallow_clone();
            shadow
                .f_copy_(var)
                .map_err(|e| mismatch(name, e.to_string()))?;
        }
        Ok(Self {
            config: config.clone(),
            names: model
                .iter()
                .map(|(name, var)| (name.clone(), var.requires_grad()))
                .collect(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// The decay used by [`Ema::update`] at `step` (optimizer steps completed, 1 after the
    /// first). With `e = step − start_step − 1` (as diffusers' `EMAModel.get_decay`):
    /// `e <= 0` gives 0 (the EMA copies the weights); otherwise `1 − (1 + e/inv_gamma)^(−power)`
    /// with warmup, or `decay` without, clamped to `[min_decay, decay]`.
    pub fn decay_at(&self, step: u64) -> f64 {
        let c = &self.config;
        let e = step.saturating_sub(c.start_step.saturating_add(1));
        if e == 0 {
            return 0.0;
        }
        let d = if c.warmup {
            1.0 - (1.0 + e as f64 / c.inv_gamma).powf(-c.power)
        } else {
            c.decay
        };
        d.min(c.decay).max(c.min_decay)
    }

    /// After optimizer step `step` (1 after the first): `θ_ema ← d·θ_ema + (1 − d)·θ` with
    /// `d = decay_at(step)` for the trainable variables (computed as `θ_ema.lerp_(θ, 1 − d)`),
    /// a copy for the others; in place, without recording gradients. Up to `start_step` the
    /// weights are copied; after it, only every `update_every`-th step (counted from
    /// `start_step`) averages and the others leave the EMA unchanged.
    pub fn update(&mut self, model_vs: &VarStore, ema_vs: &mut VarStore, step: u64) {
        self.update_except(model_vs, ema_vs, step, &|_| false);
    }

    /// The weight `w = 1 − d` when [`Ema::update`] at `step` averages the trainable
    /// variables, for an optimizer that averages them in its own pass
    /// ([`super::AdamW::step_clip_zero_ema`]); `None` at steps that copy or leave the EMA alone.
    pub fn averaging_weight(&self, step: u64) -> Option<f64> {
        let c = &self.config;
        let copy_only = step <= c.start_step;
        if copy_only || !(step - c.start_step).is_multiple_of(c.update_every.max(1)) {
            return None;
        }
        let decay = self.decay_at(step);
        (decay > 0.0).then_some(1.0 - decay)
    }

    /// [`Ema::update`] for every variable but the trainable ones `averaged` names (those an
    /// optimizer already averaged at this step with [`Ema::averaging_weight`]).
    pub fn update_except(
        &mut self,
        model_vs: &VarStore,
        ema_vs: &mut VarStore,
        step: u64,
        averaged: &dyn Fn(&str) -> bool,
    ) {
        let c = &self.config;
        let copy_only = step <= c.start_step;
        if !copy_only && !(step - c.start_step).is_multiple_of(c.update_every.max(1)) {
            return;
        }
        let decay = if copy_only { 0.0 } else { self.decay_at(step) };
        if decay > 0.0 && self.names.iter().all(|(name, t)| *t && averaged(name)) {
            return;
        }
        let model = model_vs.variables();
        let ema = ema_vs.variables();
        let _guard = tch::no_grad_guard();
        for (name, trainable) in &self.names {
            let (Some(var), Some(shadow)) = (model.get(name), ema.get(name)) else {
                panic!(
                    "Ema::update: variable `{name}` missing from a VarStore checked at Ema::new"
                );
            };
            let mut shadow = shadow.shallow_clone();
            if *trainable && decay > 0.0 {
                if !averaged(name) {
                    let _ = shadow.lerp_(var, 1.0 - decay);
                }
            } else {
                shadow.copy_(var);
            }
        }
    }
}
