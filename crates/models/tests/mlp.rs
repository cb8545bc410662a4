//! The MLP denoiser for vector data: shapes, gradients, save/load, summary and named errors.

mod common;

use common::{assert_every_param_has_grad, bit_identical, max_diff, scratch_file};
use difflab_models::{Activation, MlpConfig, MlpDenoiser, load_safetensors};
use tch::{Device, Kind, Tensor, nn};

const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);

fn small(activation: Activation) -> MlpConfig {
    MlpConfig {
        hidden: 32,
        layers: 3,
        activation,
        ..MlpConfig::default()
    }
}

fn build(config: &MlpConfig) -> (MlpDenoiser, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MlpDenoiser::new(&vs.root(), config).expect("build");
    (model, vs)
}

#[test]
fn defaults_shapes_and_time_dependence() {
    let defaults = MlpConfig::default();
    assert_eq!(
        (defaults.data_dim, defaults.hidden, defaults.layers),
        (2, 256, 3)
    );
    assert_eq!(defaults.activation, Activation::Silu);
    let (model, _vs) = build(&defaults);
    let x = Tensor::randn([7, 2], FLOAT);
    assert_eq!(model.forward(&x, &Tensor::from(3i64)).size(), [7, 2]);

    for activation in [Activation::Silu, Activation::Gelu, Activation::Relu] {
        tch::manual_seed(0);
        let mut cfg = small(activation);
        cfg.data_dim = 3;
        let (model, _vs) = build(&cfg);
        let x = Tensor::randn([5, 3], FLOAT);
        let t = Tensor::from_slice(&[0i64, 10, 100, 500, 999]);
        let out = model.forward(&x, &t);
        assert_eq!(out.size(), [5, 3], "{activation:?}");
        let later = model.forward(&x, &(t + 1));
        assert!(max_diff(&out, &later) > 1e-6, "{activation:?}: t ignored");
    }
}

/// The inference paths (no autograd: each layer one product onto its summed biases, and with
/// SiLU and a shared timestep the BLAS product with the biases added inside the SiLU pass)
/// compute what the autograd forward does, to float rounding, for every activation and for
/// shared and per-example timesteps.
#[test]
fn inference_paths_match_the_autograd_forward() {
    for activation in [Activation::Silu, Activation::Gelu, Activation::Relu] {
        tch::manual_seed(1);
        let (model, _vs) = build(&small(activation));
        let x = Tensor::randn([9, 2], FLOAT) * 3.0;
        let shared = Tensor::from_slice(&[417_i64]).expand([9], false);
        let per_example = Tensor::randint(1000, [9], (Kind::Int64, Device::Cpu));
        for t in [shared, per_example] {
            let with_grad = model.forward(&x, &t);
            assert!(with_grad.requires_grad(), "the autograd path");
            let without = tch::no_grad(|| model.forward(&x, &t));
            assert!(
                max_diff(&with_grad.detach(), &without) <= 1e-5,
                "{activation:?}: {}",
                max_diff(&with_grad.detach(), &without)
            );
        }
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    for activation in [Activation::Silu, Activation::Gelu, Activation::Relu] {
        tch::manual_seed(1);
        let (model, vs) = build(&small(activation));
        let x = Tensor::randn([64, 2], FLOAT);
        let t = Tensor::randint(1000, [64], (Kind::Int64, Device::Cpu));
        let target = Tensor::randn([64, 2], FLOAT);
        (model.forward(&x, &t) - target)
            .square()
            .mean(Kind::Float)
            .backward();
        assert_every_param_has_grad(&vs, &format!("MLP {activation:?}"));
    }
}

#[test]
fn save_load_is_bit_identical() {
    tch::manual_seed(2);
    let cfg = small(Activation::Gelu);
    let (model, vs) = build(&cfg);
    let path = scratch_file("mlp.safetensors");
    vs.save(&path).expect("save");
    tch::manual_seed(3);
    let (fresh, mut fresh_vs) = build(&cfg);
    let x = Tensor::randn([16, 2], FLOAT);
    let t = Tensor::from(42.5f32);
    assert!(max_diff(&model.forward(&x, &t), &fresh.forward(&x, &t)) > 0.0);
    load_safetensors(&mut fresh_vs, &path).expect("load");
    assert!(bit_identical(
        &model.forward(&x, &t),
        &fresh.forward(&x, &t)
    ));
}

#[test]
fn summary_counts_every_parameter() {
    let (model, vs) = build(&small(Activation::Silu));
    let summary = model.summary().expect("summary");
    println!("{summary}");
    let names: Vec<&str> = summary.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "time_embedding",
            "input",
            "layers.0",
            "layers.1",
            "layers.2",
            "output"
        ]
    );
    assert_eq!(summary.input_shape, [1, 2]);
    assert_eq!(summary.rows[5].output_shape, [1, 2]);
    // Each hidden layer: 32×32 + 32 (linear) and 32×32 + 32 (time projection).
    assert_eq!(summary.rows[2].params, 2 * (32 * 32 + 32));
    let stored: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(summary.total_params, stored);
    assert_eq!(model.num_parameters(), stored);
    assert!(vs.variables().contains_key("layers.2.time_proj.weight"));
}

#[test]
fn bad_inputs_and_configs_are_named() {
    let (model, _vs) = build(&small(Activation::Relu));
    let err = model
        .try_forward(&Tensor::zeros([4, 3], FLOAT), &Tensor::from(1i64))
        .unwrap_err();
    assert!(err.to_string().contains("`x`"), "{err}");
    let err = model
        .try_forward(&Tensor::zeros([4, 2], FLOAT), &Tensor::zeros([3], FLOAT))
        .unwrap_err();
    assert!(err.to_string().contains("`t`"), "{err}");

    let unknown = serde_json::from_str::<MlpConfig>(r#"{"depth": 4}"#).unwrap_err();
    assert!(unknown.to_string().contains("depth"), "{unknown}");
    let bad_act = serde_json::from_str::<MlpConfig>(r#"{"activation": "tanh"}"#).unwrap_err();
    assert!(bad_act.to_string().contains("tanh"), "{bad_act}");
    for (json, expected) in [
        (r#"{"layers": 0}"#, "invalid layers = 0"),
        (r#"{"hidden": 0}"#, "invalid hidden = 0"),
        (r#"{"data_dim": -2}"#, "invalid data_dim = -2"),
        (
            r#"{"time_embedding": {"sinusoid_dim": 1}}"#,
            "invalid time_embedding.sinusoid_dim = 1",
        ),
    ] {
        let cfg: MlpConfig = serde_json::from_str(json).expect("parses");
        let vs = nn::VarStore::new(Device::Cpu);
        let msg = match MlpDenoiser::new(&vs.root(), &cfg) {
            Ok(_) => panic!("{json} built"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(expected), "{json}: {msg:?} lacks {expected:?}");
    }
}
