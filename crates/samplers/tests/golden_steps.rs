//! Every single DDIM and DDPM step in `tests/golden/schedulers.json` against diffusers.

#[path = "../../../tests/support/golden.rs"]
mod golden;

use difflab_samplers::{X0Processing, ddim_step, ddpm_step};
use difflab_schedulers::{
    BetaScheduleKind, Prediction, Schedule, ScheduleConfig, TimestepSpacing, VarianceType,
    inference_timesteps,
};
use golden::{assert_tensor_close, schedulers_json, tensor};

fn schedule_of(entry: &serde_json::Value) -> difflab_schedulers::NoiseSchedule {
    let kind: BetaScheduleKind = entry["beta_schedule"].as_str().unwrap().parse().unwrap();
    let mut cfg = ScheduleConfig::new(
        kind,
        entry["num_train_timesteps"].as_u64().unwrap() as usize,
    );
    cfg.beta_start = entry["beta_start"].as_f64();
    cfg.beta_end = entry["beta_end"].as_f64();
    cfg.build().unwrap()
}

fn clip(entry: &serde_json::Value) -> X0Processing {
    if entry["clip_sample"].as_bool().unwrap() {
        X0Processing::Clip { range: 1.0 }
    } else {
        X0Processing::None
    }
}

fn label(entry: &serde_json::Value) -> String {
    let mut e = entry.clone();
    for k in ["prev_sample", "pred_original_sample"] {
        e.as_object_mut().unwrap().remove(k);
    }
    e.to_string()
}

#[test]
fn ddim_single_steps_match_diffusers() {
    let g = schedulers_json();
    let sample = tensor(&g["tensors"]["sample"]);
    let model_output = tensor(&g["tensors"]["model_output"]);
    let variance_noise = tensor(&g["tensors"]["variance_noise"]);
    let entries = g["ddim_steps"].as_array().unwrap();
    assert_eq!(entries.len(), 36);
    for entry in entries {
        let schedule = schedule_of(entry);
        let n = entry["num_inference_steps"].as_u64().unwrap() as usize;
        let spacing: TimestepSpacing = entry["timestep_spacing"].as_str().unwrap().parse().unwrap();
        let ts = inference_timesteps(schedule.num_train_timesteps(), n, spacing, 0).unwrap();
        let t = entry["timestep"].as_i64().unwrap();
        let i = ts
            .iter()
            .position(|&x| x == t)
            .expect("golden timestep is visited");
        let ab_prev = match ts.get(i + 1) {
            Some(&p) => schedule.alpha_bar(p as usize),
            None if entry["set_alpha_to_one"].as_bool().unwrap() => 1.0,
            None => schedule.alpha_bar(0),
        };
        let prediction: Prediction =
            serde_json::from_value(entry["prediction_type"].clone()).expect("prediction type");
        let out = ddim_step(
            prediction,
            &model_output,
            &sample,
            schedule.alpha_bar(t as usize),
            ab_prev,
            entry["eta"].as_f64().unwrap(),
            clip(entry),
            Some(&variance_noise),
        );
        let what = label(entry);
        assert_tensor_close(
            &format!("pred_x0 {what}"),
            &out.pred_x0,
            &tensor(&entry["pred_original_sample"]),
        );
        assert_tensor_close(
            &format!("prev_sample {what}"),
            &out.prev_sample,
            &tensor(&entry["prev_sample"]),
        );
    }
}

#[test]
fn ddpm_single_steps_match_diffusers() {
    let g = schedulers_json();
    let sample = tensor(&g["tensors"]["sample"]);
    let model_output = tensor(&g["tensors"]["model_output"]);
    let entries = g["ddpm_steps"].as_array().unwrap();
    assert_eq!(entries.len(), 48);
    for entry in entries {
        let schedule = schedule_of(entry);
        let t = entry["timestep"].as_i64().unwrap() as usize;
        let ab_prev = if t == 0 {
            1.0
        } else {
            schedule.alpha_bar(t - 1)
        };
        let prediction: Prediction =
            serde_json::from_value(entry["prediction_type"].clone()).expect("prediction type");
        let variance: VarianceType =
            serde_json::from_value(entry["variance_type"].clone()).unwrap();
        let step_noise = tensor(&entry["step_noise"]);
        let out = ddpm_step(
            prediction,
            &model_output,
            &sample,
            schedule.alpha_bar(t),
            ab_prev,
            variance,
            clip(entry),
            (t > 0).then_some(&step_noise),
        );
        let what = label(entry);
        assert_tensor_close(
            &format!("pred_x0 {what}"),
            &out.pred_x0,
            &tensor(&entry["pred_original_sample"]),
        );
        assert_tensor_close(
            &format!("prev_sample {what}"),
            &out.prev_sample,
            &tensor(&entry["prev_sample"]),
        );
    }
}
