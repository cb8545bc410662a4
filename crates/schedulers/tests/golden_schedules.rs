//! Schedule tables, DDIM timestep lists and the forward process against diffusers
//! (`tests/golden/schedulers.json`).

#[path = "../../../tests/support/golden.rs"]
mod golden;

use difflab_schedulers::{
    BetaScheduleKind, ForwardProcess, Prediction, ScheduleConfig, TimestepSpacing,
    inference_timesteps,
};
use golden::{assert_close, assert_tensor_close, f64s, schedulers_json, tensor};
use tch::{Device, Kind, Tensor};

fn config_of(entry: &serde_json::Value) -> ScheduleConfig {
    let kind: BetaScheduleKind = entry["beta_schedule"].as_str().unwrap().parse().unwrap();
    let mut cfg = ScheduleConfig::new(
        kind,
        entry["num_train_timesteps"].as_u64().unwrap() as usize,
    );
    cfg.beta_start = entry["beta_start"].as_f64();
    cfg.beta_end = entry["beta_end"].as_f64();
    cfg
}

#[test]
fn beta_and_alpha_bar_tables_match_diffusers() {
    let g = schedulers_json();
    let entries = g["schedules"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "one entry per schedule kind");
    for entry in entries {
        let cfg = config_of(entry);
        let s = cfg.build().unwrap();
        let name = entry["beta_schedule"].as_str().unwrap();
        assert_close(&format!("{name} betas"), &s.betas, &f64s(&entry["betas"]));
        assert_close(
            &format!("{name} alphas_cumprod"),
            &s.alphas_cumprod,
            &f64s(&entry["alphas_cumprod"]),
        );
    }
}

#[test]
fn ddim_timestep_lists_match_diffusers() {
    let g = schedulers_json();
    for entry in g["ddim_timesteps"].as_array().unwrap() {
        let spacing: TimestepSpacing = entry["timestep_spacing"].as_str().unwrap().parse().unwrap();
        let got = inference_timesteps(
            entry["num_train_timesteps"].as_u64().unwrap() as usize,
            entry["num_inference_steps"].as_u64().unwrap() as usize,
            spacing,
            entry["steps_offset"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let want: Vec<i64> = entry["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "{spacing:?} {}", entry["num_inference_steps"]);
    }
}

#[test]
fn forward_process_and_velocity_match_diffusers() {
    let g = schedulers_json();
    let f = &g["forward"];
    let schedule = config_of(f).build().unwrap();
    let fp = ForwardProcess::new(&schedule, Device::Cpu);
    let x0 = tensor(&g["tensors"]["x0"]);
    let noise = tensor(&g["tensors"]["noise"]);
    let t: Vec<i64> = f["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let t = Tensor::from_slice(&t);
    assert_tensor_close(
        "add_noise",
        &fp.q_sample(&x0, &t, &noise),
        &tensor(&f["add_noise"]),
    );
    assert_tensor_close(
        "velocity",
        &fp.velocity(&x0, &t, &noise),
        &tensor(&f["velocity"]),
    );
    // The combined lookup the training loss uses gives the same x_t and every target.
    for prediction in [Prediction::Eps, Prediction::X0, Prediction::V] {
        let (x_t, target) = fp.q_sample_and_target(prediction, &x0, &t, &noise);
        assert_tensor_close("add_noise (combined)", &x_t, &tensor(&f["add_noise"]));
        let want = match prediction {
            Prediction::Eps => noise.shallow_clone(),
            Prediction::X0 => x0.shallow_clone(),
            Prediction::V => tensor(&f["velocity"]),
        };
        assert_tensor_close("target (combined)", &target, &want);
    }
    // The per-sample path must agree with the shared-coefficient path used by samplers.
    for (i, &ti) in [0i64, 503].iter().enumerate() {
        let ab = schedule.alphas_cumprod[ti as usize];
        let (a, s) = (ab.sqrt(), (1.0 - ab).sqrt());
        let xi = x0.get(i as i64).unsqueeze(0);
        let ni = noise.get(i as i64).unsqueeze(0);
        let v = Prediction::V.target(&xi, &ni, a, s);
        assert_tensor_close(
            "velocity (f64 coef)",
            &v,
            &tensor(&f["velocity"]).get(i as i64).unsqueeze(0),
        );
    }
    assert_eq!(fp.q_sample(&x0, &t, &noise).kind(), Kind::Float);
}
