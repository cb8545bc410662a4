//! The native UNetConfig: tiny models with full and linear attention and AdaGN build, run,
//! count their parameters, and reject bad configs and inputs with named errors.

use difflab_models::{AttentionKind, ModelError, TimeConditioning, UNet, UNetConfig, UNetInputs};
use tch::{Device, Kind, Tensor, nn};

const TINY: &str = r#"{
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [4, 8],
    "layers_per_block": 1,
    "attention": ["linear", "full"],
    "mid_attention": "full",
    "attention_head_dim": 2,
    "norm_num_groups": 2,
    "time_embedding": {"dim": 8},
    "time_conditioning": "scale_shift",
    "num_classes": 3,
    "null_class": true,
    "dropout": 0.1,
    "learned_variance": true
}"#;

fn tiny() -> UNetConfig {
    serde_json::from_str(TINY).expect("tiny config parses")
}

fn build(config: &UNetConfig) -> (UNet, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), config).expect("build");
    (unet, vs)
}

fn stored_params(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}

#[test]
fn tiny_config_builds_runs_and_counts() {
    let config = tiny();
    assert_eq!(
        config.attention,
        [AttentionKind::Linear, AttentionKind::Full]
    );
    assert_eq!(config.time_conditioning, TimeConditioning::ScaleShift);
    let (unet, vs) = build(&config);
    tch::manual_seed(1);
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10i64, 500]);
    let y = Tensor::from_slice(&[0i64, 2]);
    let out = unet.forward(&x, &t, &UNetInputs::classes(Some(&y)), false);
    assert_eq!(
        out.size(),
        [2, 6, 16, 16],
        "learned variance doubles out channels"
    );
    assert!(out.isfinite().all().int64_value(&[]) == 1);

    let summary = unet.summary(16, 16).expect("summary");
    println!("{summary}");
    let total = stored_params(&vs);
    assert!(total < 20_000, "tiny model has {total} parameters");
    assert_eq!(summary.total_params, total);
    assert_eq!(unet.num_parameters(), total);
    let row = |name: &str| {
        summary
            .rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
            .clone()
    };
    assert_eq!(row("conv_in").output_shape, [1, 4, 16, 16]);
    assert_eq!(row("down_blocks.0").output_shape, [1, 4, 8, 8]);
    assert_eq!(row("down_blocks.1").output_shape, [1, 8, 8, 8]);
    assert_eq!(row("mid_block").output_shape, [1, 8, 8, 8]);
    assert_eq!(row("up_blocks.0").output_shape, [1, 8, 16, 16]);
    assert_eq!(row("up_blocks.1").output_shape, [1, 4, 16, 16]);
    assert_eq!(row("conv_out").output_shape, [1, 6, 16, 16]);
    assert_eq!(row("class_embedding").params, 4 * 8, "3 classes + null row");

    // Parameter names are diffusers'.
    let names = vs.variables();
    for name in [
        "down_blocks.0.attentions.0.to_q.weight",
        "down_blocks.0.attentions.0.group_norm.weight",
        "up_blocks.1.attentions.1.to_out.0.bias",
        "mid_block.attentions.0.to_k.weight",
        "time_embedding.linear_1.weight",
        "class_embedding.weight",
        "conv_norm_out.weight",
    ] {
        assert!(names.contains_key(name), "missing {name}");
    }
    // AdaGN projects to scale and shift: 2 x channels.
    assert_eq!(
        names["down_blocks.1.resnets.0.time_emb_proj.weight"].size(),
        [16, 8]
    );

    // Without learned variance only conv_out shrinks.
    let mut plain = config.clone();
    plain.learned_variance = false;
    let (plain_unet, plain_vs) = build(&plain);
    assert_eq!(
        plain_unet
            .forward(&x, &t, &UNetInputs::classes(Some(&y)), false)
            .size(),
        [2, 3, 16, 16]
    );
    assert_eq!(total - stored_params(&plain_vs), 3 * 4 * 9 + 3);
}

#[test]
fn every_parameter_gets_a_gradient() {
    let (unet, vs) = build(&tiny());
    tch::manual_seed(2);
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3.5f32, 700.0]);
    let loss = unet
        .forward(&x, &t, &UNetInputs::classes(None), true)
        .square()
        .mean(Kind::Float);
    loss.backward();
    for (name, var) in vs.variables() {
        let grad = var.grad();
        assert!(grad.defined(), "{name} has no gradient");
        assert!(
            grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name}: zero gradient"
        );
    }
}

#[test]
fn null_class_is_the_default_label_and_scalar_t_broadcasts() {
    let (unet, _vs) = build(&tiny());
    let x = Tensor::ones([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let none = unet.forward(&x, &Tensor::from(5i64), &UNetInputs::classes(None), false);
    let null = unet.forward(
        &x,
        &Tensor::from_slice(&[5i64, 5]),
        &UNetInputs::classes(Some(&Tensor::from_slice(&[3i64, 3]))),
        false,
    );
    // A scalar t is shared by the batch, so its embedding is computed for one row and
    // broadcast; the explicit [5, 5] is embedded row by row. One-row and two-row matrix
    // products may round differently in the last bits.
    assert!((none - &null).abs().max().double_value(&[]) < 1e-5);
    let class0 = unet.forward(
        &x,
        &Tensor::from_slice(&[5i64]),
        &UNetInputs::classes(Some(&Tensor::from_slice(&[0i64, 0]))),
        false,
    );
    assert!((class0 - null).abs().max().double_value(&[]) > 1e-4);
}

#[test]
fn channels_from_base_and_multipliers() {
    let config: UNetConfig =
        serde_json::from_str(r#"{"base_channels": 8, "channel_mult": [1, 2, 4], "max_channels": 16, "norm_num_groups": 4, "attention_head_dim": null}"#)
            .unwrap();
    assert_eq!(config.block_channels().unwrap(), [8, 16, 16]);
    let (unet, _vs) = build(&config);
    let out = unet.forward(
        &Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu)),
        &Tensor::from(0i64),
        &UNetInputs::classes(None),
        false,
    );
    assert_eq!(out.size(), [1, 3, 8, 8]);
}

fn config_error(json: &str) -> String {
    let config: UNetConfig = serde_json::from_str(json).expect("parses");
    let vs = nn::VarStore::new(Device::Cpu);
    match UNet::new(&vs.root(), &config) {
        Ok(_) => panic!("{json} built, expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_are_named() {
    let unknown = serde_json::from_str::<UNetConfig>(r#"{"attn_heads": 4}"#).unwrap_err();
    assert!(unknown.to_string().contains("attn_heads"), "{unknown}");
    let bad_kind = serde_json::from_str::<UNetConfig>(r#"{"attention": ["flash"]}"#).unwrap_err();
    assert!(bad_kind.to_string().contains("flash"), "{bad_kind}");

    for (json, expected) in [
        (
            r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "attention": ["full"]}"#,
            "invalid attention = [Full]",
        ),
        (
            r#"{"block_out_channels": [8, 12], "norm_num_groups": 8}"#,
            "invalid norm_num_groups = 8",
        ),
        (
            r#"{"block_out_channels": [8], "base_channels": 8}"#,
            "invalid block_out_channels = [8]",
        ),
        (
            r#"{"block_out_channels": [8], "norm_num_groups": 4, "null_class": true}"#,
            "invalid null_class = true",
        ),
        (
            r#"{"block_out_channels": [8], "norm_num_groups": 4, "attention_head_dim": 16}"#,
            "invalid attention_head_dim = 16",
        ),
        (
            r#"{"block_out_channels": [8], "norm_num_groups": 4, "dropout": 1.5}"#,
            "invalid dropout = 1.5",
        ),
        (
            r#"{"block_out_channels": [8], "norm_num_groups": 4, "layers_per_block": 0}"#,
            "invalid layers_per_block = 0",
        ),
        (
            r#"{"block_out_channels": [8], "norm_num_groups": 4, "downsample_padding": 2}"#,
            "invalid downsample_padding = 2",
        ),
        (
            r#"{"block_out_channels": [0], "norm_num_groups": 4}"#,
            "invalid block_out_channels = [0]",
        ),
    ] {
        let msg = config_error(json);
        assert!(msg.contains(expected), "{json}: {msg:?} lacks {expected:?}");
    }
}

#[test]
fn bad_inputs_are_named_not_panics() {
    let (unet, _vs) = build(&tiny());
    let cpu = (Kind::Float, Device::Cpu);
    let t = Tensor::from_slice(&[1i64, 2]);
    let y = Tensor::from_slice(&[0i64, 1]);
    let cases: Vec<(Result<Tensor, ModelError>, &str)> = vec![
        (
            unet.try_forward(
                &Tensor::zeros([2, 1, 16, 16], cpu),
                &t,
                &UNetInputs::classes(Some(&y)),
                false,
            ),
            "`x`",
        ),
        (
            unet.try_forward(
                &Tensor::zeros([2, 3, 15, 16], cpu),
                &t,
                &UNetInputs::classes(Some(&y)),
                false,
            ),
            "multiples of 2",
        ),
        (
            unet.try_forward(
                &Tensor::zeros([2, 3, 16], cpu),
                &t,
                &UNetInputs::classes(Some(&y)),
                false,
            ),
            "[B, C, H, W]",
        ),
        (
            unet.try_forward(
                &Tensor::zeros([2, 3, 16, 16], cpu),
                &Tensor::from_slice(&[1i64, 2, 3]),
                &UNetInputs::classes(Some(&y)),
                false,
            ),
            "`t`",
        ),
        (
            unet.try_forward(
                &Tensor::zeros([2, 3, 16, 16], cpu),
                &t,
                &UNetInputs::classes(Some(&Tensor::from_slice(&[0i64, 4]))),
                false,
            ),
            "0..4",
        ),
        (
            unet.try_forward(
                &Tensor::zeros([2, 3, 16, 16], cpu),
                &t,
                &UNetInputs::classes(Some(&Tensor::from_slice(&[0.0f32, 1.0]))),
                false,
            ),
            "int64",
        ),
    ];
    for (result, expected) in cases {
        let msg = result.expect_err("should fail").to_string();
        assert!(msg.contains(expected), "{msg:?} lacks {expected:?}");
    }
    // An unconditional model refuses labels; a conditional one without null class needs them.
    let mut uncond = tiny();
    uncond.num_classes = None;
    uncond.null_class = false;
    let (uncond_unet, _vs) = build(&uncond);
    let err = uncond_unet
        .try_forward(
            &Tensor::zeros([2, 3, 16, 16], cpu),
            &t,
            &UNetInputs::classes(Some(&y)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("no class embedding"), "{err}");
    let mut no_null = tiny();
    no_null.null_class = false;
    let (no_null_unet, _vs) = build(&no_null);
    let err = no_null_unet
        .try_forward(
            &Tensor::zeros([2, 3, 16, 16], cpu),
            &t,
            &UNetInputs::classes(None),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("required"), "{err}");
}

/// At batch 1 without autograd the UNet runs difflab's own kernels (Winograd and im2col
/// convolutions, fused GroupNorm+SiLU, the batch-1 attention, nearest upsampling) where they
/// pay off; a batch of two runs libtorch's operations throughout. Both give one image the same
/// output, at channel counts and sizes where every batch-1 path is taken.
#[test]
fn batch_one_inference_paths_match_the_batched_ones() {
    let config: UNetConfig = serde_json::from_str(
        r#"{
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [16, 32],
            "layers_per_block": 1,
            "attention": ["none", "full"],
            "mid_attention": "full",
            "attention_head_dim": 8,
            "norm_num_groups": 4,
            "time_embedding": {"dim": 32},
            "time_conditioning": "scale_shift"
        }"#,
    )
    .expect("config parses");
    let (unet, _vs) = build(&config);
    let _guard = tch::no_grad_guard();
    let f = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, 3, 32, 32], f);
    let t = Tensor::from_slice(&[7i64, 7]);
    let batched = unet.forward(&x, &t, &UNetInputs::classes(None), false);
    let one = unet.forward(
        &x.narrow(0, 0, 1),
        &t.narrow(0, 0, 1),
        &UNetInputs::classes(None),
        false,
    );
    let scale = batched.abs().max().double_value(&[]);
    let err = (one - batched.narrow(0, 0, 1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        err < 1e-4 * scale.max(1.0),
        "max difference {err} (scale {scale})"
    );
}
