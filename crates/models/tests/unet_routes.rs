//! The UNet's conditioning routes (class label, label vector, conditioning image, context,
//! self-conditioning, low-resolution noise level), learned variance, attention kinds, time
//! conditioning and resampling: shapes at 32, 128 and 256, gradients reaching every
//! parameter, bit-identical safetensors round trips, named errors and summaries.

mod common;

use common::{assert_every_param_has_grad, bit_identical, max_diff, scratch_file};
use difflab_models::{
    AttentionKind, ModelError, NoiseLevelEmbeddingConfig, Resample, TimeConditioning, UNet,
    UNetConfig, UNetInputs, load_safetensors,
};
use tch::{Device, Kind, Tensor, nn};

const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);
const LABEL_DIM: i64 = 5;
const COND_CHANNELS: i64 = 2;
const CONTEXT_DIM: i64 = 6;
const CLASSES: i64 = 3;

/// Which optional routes a test model has.
#[derive(Clone, Copy, Debug, Default)]
struct Routes {
    class: bool,
    label: bool,
    image: bool,
    context: bool,
    self_cond: bool,
    learned_variance: bool,
    noise_level: bool,
}

impl Routes {
    const ALL: Self = Self {
        class: true,
        label: true,
        image: true,
        context: true,
        self_cond: true,
        learned_variance: true,
        noise_level: true,
    };

    /// The routes of bit pattern `bits` (bit 0 class … bit 5 learned variance).
    fn from_bits(bits: u32) -> Self {
        let on = |i: u32| bits & (1 << i) != 0;
        Self {
            class: on(0),
            label: on(1),
            image: on(2),
            context: on(3),
            self_cond: on(4),
            learned_variance: on(5),
            noise_level: on(6),
        }
    }
}

/// A tiny UNet (channels 4/8[/8]) with `routes`; full attention sits only at levels of at most
/// 32×32 tokens, so the test stays small at 128 and 256.
fn config(
    routes: Routes,
    attention: AttentionKind,
    conditioning: TimeConditioning,
    levels: usize,
    resolution: i64,
) -> UNetConfig {
    let channels: Vec<i64> = [4, 8, 8][..levels].to_vec();
    let per_level: Vec<AttentionKind> = (0..levels)
        .map(|level| {
            let side = resolution >> level;
            if attention == AttentionKind::Full && side > 32 {
                AttentionKind::None
            } else {
                attention
            }
        })
        .collect();
    UNetConfig {
        in_channels: 3,
        out_channels: 3,
        block_out_channels: Some(channels),
        layers_per_block: 1,
        attention: per_level,
        mid_attention: attention,
        attention_head_dim: Some(2),
        norm_num_groups: 2,
        time_embedding: difflab_models::TimeEmbeddingConfig {
            dim: Some(8),
            ..Default::default()
        },
        time_conditioning: conditioning,
        num_classes: routes.class.then_some(CLASSES),
        null_class: routes.class,
        learned_variance: routes.learned_variance,
        label_dim: routes.label.then_some(LABEL_DIM),
        cond_channels: if routes.image { COND_CHANNELS } else { 0 },
        context_dim: routes.context.then_some(CONTEXT_DIM),
        self_condition: routes.self_cond,
        lowres_noise_level: routes
            .noise_level
            .then_some(NoiseLevelEmbeddingConfig::default()),
        ..UNetConfig::default()
    }
}

/// Random inputs for every route of `routes`, batch `b`, resolution `side`.
struct Inputs {
    x: Tensor,
    t: Tensor,
    labels: Option<Tensor>,
    label_vector: Option<Tensor>,
    image: Option<Tensor>,
    context: Option<Tensor>,
    self_cond: Option<Tensor>,
    noise_level: Option<Tensor>,
}

impl Inputs {
    fn new(routes: Routes, b: i64, side: i64) -> Self {
        let image = |c| Tensor::randn([b, c, side, side], FLOAT);
        Self {
            x: image(3),
            t: Tensor::randint(1000, [b], (Kind::Int64, Device::Cpu)),
            labels: routes
                .class
                .then(|| Tensor::randint(CLASSES, [b], (Kind::Int64, Device::Cpu))),
            label_vector: routes.label.then(|| {
                Tensor::rand([b, LABEL_DIM], FLOAT)
                    .ge(0.5)
                    .to_kind(Kind::Float)
            }),
            image: routes.image.then(|| image(COND_CHANNELS)),
            context: routes
                .context
                .then(|| Tensor::randn([b, CONTEXT_DIM], FLOAT)),
            self_cond: routes.self_cond.then(|| image(3)),
            noise_level: routes.noise_level.then(|| Tensor::rand([b], FLOAT)),
        }
    }

    fn unet_inputs(&self) -> UNetInputs<'_> {
        UNetInputs {
            class_labels: self.labels.as_ref(),
            label_vector: self.label_vector.as_ref(),
            cond_image: self.image.as_ref(),
            context: self.context.as_ref(),
            self_cond: self.self_cond.as_ref(),
            lowres_noise_level: self.noise_level.as_ref(),
        }
    }
}

fn build(config: &UNetConfig) -> (UNet, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), config).unwrap_or_else(|e| panic!("build {config:?}: {e}"));
    (unet, vs)
}

/// Build, run once without gradients and check the output shape.
fn check_shape(config: &UNetConfig, routes: Routes, b: i64, side: i64) {
    let (unet, _vs) = build(config);
    let inputs = Inputs::new(routes, b, side);
    let out = tch::no_grad(|| unet.try_forward(&inputs.x, &inputs.t, &inputs.unet_inputs(), false))
        .unwrap_or_else(|e| panic!("{routes:?} at {side}: {e}"));
    let c = if routes.learned_variance { 6 } else { 3 };
    assert_eq!(out.size(), [b, c, side, side], "{routes:?} {config:?}");
    assert!(
        out.isfinite().all().int64_value(&[]) == 1,
        "{routes:?} at {side}: non-finite output"
    );
}

const ATTENTIONS: [AttentionKind; 3] = [
    AttentionKind::None,
    AttentionKind::Full,
    AttentionKind::Linear,
];
const CONDITIONINGS: [TimeConditioning; 2] = [TimeConditioning::Add, TimeConditioning::ScaleShift];

#[test]
fn every_route_combination_at_32() {
    tch::manual_seed(0);
    // All 2^7 subsets of routes, each paired with one (attention, time conditioning) in turn
    // so that every pair meets many subsets; then every pair with no and with all routes.
    // (The full product, 768 models, adds little and costs a minute on a busy CPU.)
    for bits in 0..(1u32 << 7) {
        let routes = Routes::from_bits(bits);
        let attention = ATTENTIONS[bits as usize % 3];
        let conditioning = CONDITIONINGS[(bits as usize / 3) % 2];
        check_shape(
            &config(routes, attention, conditioning, 2, 32),
            routes,
            2,
            32,
        );
    }
    for attention in ATTENTIONS {
        for conditioning in CONDITIONINGS {
            for routes in [Routes::default(), Routes::ALL] {
                check_shape(
                    &config(routes, attention, conditioning, 2, 32),
                    routes,
                    2,
                    32,
                );
            }
        }
    }
}

#[test]
fn every_route_combination_at_128_and_256() {
    tch::manual_seed(1);
    // All 2^7 subsets of routes at both resolutions (batch 1, three levels), cycling through the
    // (attention, time conditioning) pairs; then every pair with no and with all routes.
    for side in [128, 256] {
        for bits in 0..(1u32 << 7) {
            let routes = Routes::from_bits(bits);
            let attention = ATTENTIONS[(bits as usize + 1) % 3];
            let conditioning = CONDITIONINGS[(bits as usize / 3 + 1) % 2];
            check_shape(
                &config(routes, attention, conditioning, 3, side),
                routes,
                1,
                side,
            );
        }
        for attention in ATTENTIONS {
            for conditioning in CONDITIONINGS {
                for routes in [Routes::default(), Routes::ALL] {
                    check_shape(
                        &config(routes, attention, conditioning, 3, side),
                        routes,
                        1,
                        side,
                    );
                }
            }
        }
    }
}

#[test]
fn resnet_resampling_keeps_shapes_and_names() {
    tch::manual_seed(2);
    for side in [32, 128] {
        let mut cfg = config(
            Routes::ALL,
            AttentionKind::Linear,
            TimeConditioning::ScaleShift,
            3,
            side,
        );
        cfg.resample = Resample::Resnet;
        check_shape(&cfg, Routes::ALL, 1, side);
    }
    let mut cfg = config(
        Routes::default(),
        AttentionKind::None,
        TimeConditioning::Add,
        2,
        16,
    );
    cfg.resample = Resample::Resnet;
    let (unet, vs) = build(&cfg);
    let names = vs.variables();
    for name in [
        "down_blocks.0.downsamplers.0.conv1.weight",
        "down_blocks.0.downsamplers.0.time_emb_proj.weight",
        "up_blocks.0.upsamplers.0.norm2.weight",
    ] {
        assert!(names.contains_key(name), "missing {name}");
    }
    assert!(!names.contains_key("down_blocks.0.downsamplers.0.conv.weight"));
    let summary = unet.summary(16, 16).expect("summary");
    assert_eq!(summary.total_params, unet.num_parameters());
    let stored: i64 = names.values().map(|t| t.numel() as i64).sum();
    assert_eq!(summary.total_params, stored);
}

/// Forward with `train = true`, backward a loss on the output, check every parameter.
fn check_grads(config: &UNetConfig, routes: Routes, what: &str) {
    let (unet, vs) = build(config);
    let inputs = Inputs::new(routes, 2, 16);
    let out = unet
        .try_forward(&inputs.x, &inputs.t, &inputs.unet_inputs(), true)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // A loss that depends on every output channel and position.
    let target = Tensor::randn(out.size(), FLOAT);
    (out - target).square().mean(Kind::Float).backward();
    assert_every_param_has_grad(&vs, what);
}

#[test]
fn gradients_reach_every_parameter_for_each_route() {
    tch::manual_seed(3);
    // Self-conditioning weights of conv_in only get gradient from a non-zero x̂₀, which
    // Inputs provides. The context gains start at zero and still get gradient ∂L/∂g · c.
    let single = |f: fn(&mut Routes)| {
        let mut r = Routes::default();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, Routes)> = vec![
        ("no routes", Routes::default()),
        ("class", single(|r| r.class = true)),
        ("label vector", single(|r| r.label = true)),
        ("cond image", single(|r| r.image = true)),
        ("context", single(|r| r.context = true)),
        ("self-cond", single(|r| r.self_cond = true)),
        ("learned variance", single(|r| r.learned_variance = true)),
        ("noise level", single(|r| r.noise_level = true)),
        ("all routes", Routes::ALL),
    ];
    for (i, (what, routes)) in cases.into_iter().enumerate() {
        let attention = ATTENTIONS[i % 3];
        let conditioning = CONDITIONINGS[i % 2];
        check_grads(
            &config(routes, attention, conditioning, 2, 16),
            routes,
            what,
        );
    }
    let mut resnet = config(
        Routes::ALL,
        AttentionKind::Full,
        TimeConditioning::ScaleShift,
        2,
        16,
    );
    resnet.resample = Resample::Resnet;
    check_grads(&resnet, Routes::ALL, "all routes, resnet resampling");
}

#[test]
fn context_gain_is_the_identity_at_init_and_then_matters() {
    tch::manual_seed(4);
    let routes = Routes {
        context: true,
        ..Routes::default()
    };
    let (unet, vs) = build(&config(
        routes,
        AttentionKind::None,
        TimeConditioning::Add,
        2,
        16,
    ));
    let inputs = Inputs::new(routes, 2, 16);
    let run = |context: &Tensor| {
        let i = UNetInputs {
            context: Some(context),
            ..UNetInputs::default()
        };
        tch::no_grad(|| unet.forward(&inputs.x, &inputs.t, &i, false))
    };
    let a = run(inputs.context.as_ref().expect("context"));
    let b = run(&Tensor::zeros([2, CONTEXT_DIM], FLOAT));
    assert!(
        bit_identical(&a, &b),
        "zero-initialised gains must ignore the context"
    );
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("context_gains.") {
                var.copy_(&(Tensor::randn(var.size(), FLOAT) * 0.1));
            }
        }
    });
    let a = run(inputs.context.as_ref().expect("context"));
    let b = run(&Tensor::zeros([2, CONTEXT_DIM], FLOAT));
    assert!(
        max_diff(&a, &b) > 1e-6,
        "trained gains must read the context"
    );
}

#[test]
fn self_cond_defaults_to_zeros_and_label_vector_matters() {
    tch::manual_seed(5);
    let routes = Routes {
        self_cond: true,
        label: true,
        ..Routes::default()
    };
    let (unet, _vs) = build(&config(
        routes,
        AttentionKind::Linear,
        TimeConditioning::Add,
        2,
        16,
    ));
    let inputs = Inputs::new(routes, 2, 16);
    let zeros = Tensor::zeros([2, 3, 16, 16], FLOAT);
    let v = inputs.label_vector.as_ref().expect("labels");
    let run = |self_cond: Option<&Tensor>, label_vector: &Tensor| {
        let i = UNetInputs {
            self_cond,
            label_vector: Some(label_vector),
            ..UNetInputs::default()
        };
        tch::no_grad(|| unet.forward(&inputs.x, &inputs.t, &i, false))
    };
    assert!(bit_identical(&run(None, v), &run(Some(&zeros), v)));
    let prev = inputs.self_cond.as_ref().expect("self cond");
    assert!(max_diff(&run(None, v), &run(Some(prev), v)) > 1e-6);
    assert!(max_diff(&run(None, v), &run(None, &v.zeros_like())) > 1e-6);
}

#[test]
fn all_routes_survive_a_safetensors_round_trip_bit_for_bit() {
    tch::manual_seed(6);
    let mut cfg = config(
        Routes::ALL,
        AttentionKind::Linear,
        TimeConditioning::ScaleShift,
        2,
        16,
    );
    cfg.resample = Resample::Resnet;
    cfg.up_attention = Some(vec![AttentionKind::Full, AttentionKind::Linear]);
    let (unet, vs) = build(&cfg);
    // Make the zero-initialised context gains non-trivial so the round trip covers them.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("context_gains.") {
                var.copy_(&Tensor::randn(var.size(), FLOAT));
            }
        }
    });
    let path = scratch_file("unet_all_routes.safetensors");
    vs.save(&path).expect("save");

    tch::manual_seed(99);
    let (fresh, mut fresh_vs) = build(&cfg);
    let inputs = Inputs::new(Routes::ALL, 2, 16);
    let run =
        |m: &UNet| tch::no_grad(|| m.forward(&inputs.x, &inputs.t, &inputs.unet_inputs(), false));
    let before = run(&fresh);
    let reference = run(&unet);
    assert!(
        max_diff(&before, &reference) > 0.0,
        "fresh model should differ before loading"
    );
    load_safetensors(&mut fresh_vs, &path).expect("load");
    assert!(
        bit_identical(&run(&fresh), &reference),
        "outputs differ after reload"
    );
}

#[test]
fn summary_lists_the_new_blocks() {
    let cfg = config(
        Routes::ALL,
        AttentionKind::Full,
        TimeConditioning::Add,
        2,
        16,
    );
    let (unet, vs) = build(&cfg);
    let summary = unet.summary(16, 16).expect("summary");
    println!("{summary}");
    let names: Vec<&str> = summary.rows.iter().map(|r| r.name.as_str()).collect();
    for name in [
        "time_embedding",
        "class_embedding",
        "label_embedding",
        "lowres_noise_embedding",
        "conv_in",
        "up_blocks.0",
        "context_gains.0",
        "context_gains.1",
        "conv_out",
    ] {
        assert!(names.contains(&name), "summary lacks {name}: {names:?}");
    }
    let row = |name: &str| summary.rows.iter().find(|r| r.name == name).expect("row");
    assert_eq!(row("label_embedding").params, LABEL_DIM * 8 + 8 + 8 * 8 + 8);
    assert_eq!(row("context_gains.0").params, CONTEXT_DIM * 8 + 8);
    assert_eq!(row("context_gains.1").params, CONTEXT_DIM * 4 + 4);
    assert_eq!(row("context_gains.1").output_shape, [1, 4, 16, 16]);
    let stored: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(summary.total_params, stored);
    assert_eq!(unet.num_parameters(), stored);
    // conv_in reads x (3), the conditioning image (2) and x̂₀ (3).
    assert_eq!(vs.variables()["conv_in.weight"].size(), [4, 8, 3, 3]);
}

#[test]
fn missing_extra_and_misshapen_inputs_are_named() {
    tch::manual_seed(7);
    let (unet, _vs) = build(&config(
        Routes::ALL,
        AttentionKind::None,
        TimeConditioning::Add,
        2,
        16,
    ));
    let inputs = Inputs::new(Routes::ALL, 2, 16);
    let full = inputs.unet_inputs();
    let err = |i: UNetInputs<'_>| -> String {
        match unet.try_forward(&inputs.x, &inputs.t, &i, false) {
            Ok(_) => panic!("{i:?} ran, expected an error"),
            Err(e) => e.to_string(),
        }
    };
    for (missing, i) in [
        (
            "label_vector",
            UNetInputs {
                label_vector: None,
                ..full
            },
        ),
        (
            "cond_image",
            UNetInputs {
                cond_image: None,
                ..full
            },
        ),
        (
            "context",
            UNetInputs {
                context: None,
                ..full
            },
        ),
        (
            "lowres_noise_level",
            UNetInputs {
                lowres_noise_level: None,
                ..full
            },
        ),
    ] {
        let msg = err(i);
        assert!(
            msg.contains(&format!("`{missing}`")) && msg.contains("required"),
            "{msg}"
        );
    }
    let small = Tensor::zeros([2, COND_CHANNELS, 8, 8], FLOAT);
    let ints = Tensor::zeros([2, LABEL_DIM], (Kind::Int64, Device::Cpu));
    let ctx3 = Tensor::zeros([3, CONTEXT_DIM], FLOAT);
    let sc = Tensor::zeros([2, 6, 16, 16], FLOAT);
    let level_hi = Tensor::from_slice(&[0.5f32, 1.5]);
    let level_neg = Tensor::from_slice(&[-1i64]);
    for (what, i) in [
        (
            "`cond_image`",
            UNetInputs {
                cond_image: Some(&small),
                ..full
            },
        ),
        (
            "`label_vector`",
            UNetInputs {
                label_vector: Some(&ints),
                ..full
            },
        ),
        (
            "`context`",
            UNetInputs {
                context: Some(&ctx3),
                ..full
            },
        ),
        (
            "`self_cond`",
            UNetInputs {
                self_cond: Some(&sc),
                ..full
            },
        ),
        (
            "[0, 1]",
            UNetInputs {
                lowres_noise_level: Some(&level_hi),
                ..full
            },
        ),
        (
            ">= 0",
            UNetInputs {
                lowres_noise_level: Some(&level_neg),
                ..full
            },
        ),
    ] {
        let msg = err(i);
        assert!(msg.contains(what), "{msg:?} lacks {what:?}");
    }
    // A model without the routes refuses their inputs.
    let (plain, _vs) = build(&config(
        Routes::default(),
        AttentionKind::None,
        TimeConditioning::Add,
        2,
        16,
    ));
    for (name, i) in [
        (
            "label_vector",
            UNetInputs {
                label_vector: full.label_vector,
                ..UNetInputs::default()
            },
        ),
        (
            "cond_image",
            UNetInputs {
                cond_image: full.cond_image,
                ..UNetInputs::default()
            },
        ),
        (
            "context",
            UNetInputs {
                context: full.context,
                ..UNetInputs::default()
            },
        ),
        (
            "self_cond",
            UNetInputs {
                self_cond: full.self_cond,
                ..UNetInputs::default()
            },
        ),
        (
            "lowres_noise_level",
            UNetInputs {
                lowres_noise_level: full.lowres_noise_level,
                ..UNetInputs::default()
            },
        ),
    ] {
        let msg = match plain.try_forward(&inputs.x, &inputs.t, &i, false) {
            Ok(_) => panic!("{name} accepted by a model without it"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains(&format!("`{name}`")) && msg.contains("given"),
            "{msg}"
        );
    }
    // forward(x, t, labels) still works for models with only class routes.
    let class = Routes {
        class: true,
        ..Routes::default()
    };
    let (class_unet, _vs) = build(&config(
        class,
        AttentionKind::None,
        TimeConditioning::Add,
        2,
        16,
    ));
    assert_eq!(
        class_unet
            .forward(
                &inputs.x,
                &inputs.t,
                &UNetInputs::classes(inputs.labels.as_ref()),
                false
            )
            .size(),
        [2, 3, 16, 16]
    );
}

#[test]
fn new_config_keys_have_defaults_and_named_errors() {
    let parsed: UNetConfig = serde_json::from_str(
        r#"{"label_dim": 4, "cond_channels": 3, "context_dim": 7, "self_condition": true,
            "lowres_noise_level": {}, "resample": "resnet"}"#,
    )
    .expect("parses");
    assert_eq!(parsed.label_dim, Some(4));
    assert_eq!(
        parsed.lowres_noise_level,
        Some(NoiseLevelEmbeddingConfig::default())
    );
    assert_eq!(parsed.resample, Resample::Resnet);
    assert_eq!(parsed.conv_in_channels(), 3 + 3 + 3);
    let defaults = UNetConfig::default();
    assert_eq!(
        (
            defaults.label_dim,
            defaults.cond_channels,
            defaults.context_dim
        ),
        (None, 0, None)
    );
    assert!(!defaults.self_condition && defaults.lowres_noise_level.is_none());
    assert_eq!(defaults.resample, Resample::Conv);

    let bad = serde_json::from_str::<UNetConfig>(r#"{"resample": "pixel_shuffle"}"#).unwrap_err();
    assert!(bad.to_string().contains("pixel_shuffle"), "{bad}");
    let bad =
        serde_json::from_str::<UNetConfig>(r#"{"lowres_noise_level": {"scale": 2}}"#).unwrap_err();
    assert!(bad.to_string().contains("scale"), "{bad}");

    for (json, expected) in [
        (r#"{"label_dim": 0}"#, "invalid label_dim = 0"),
        (r#"{"cond_channels": -1}"#, "invalid cond_channels = -1"),
        (r#"{"context_dim": 0}"#, "invalid context_dim = 0"),
        (
            r#"{"lowres_noise_level": {"float_scale": 0.0}}"#,
            "invalid lowres_noise_level.float_scale = 0",
        ),
        (
            r#"{"lowres_noise_level": {"sinusoid_dim": 1}}"#,
            "invalid lowres_noise_level.sinusoid_dim = 1",
        ),
    ] {
        let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
        value["block_out_channels"] = serde_json::json!([8]);
        value["norm_num_groups"] = serde_json::json!(4);
        let cfg: UNetConfig = serde_json::from_value(value).expect("parses");
        let msg = match cfg.validate() {
            Ok(()) => panic!("{json} validated"),
            Err(e @ ModelError::InvalidConfig { .. }) => e.to_string(),
            Err(e) => panic!("{json}: unexpected error kind {e}"),
        };
        assert!(msg.contains(expected), "{json}: {msg:?} lacks {expected:?}");
    }
}
