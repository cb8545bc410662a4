//! The super-resolution UNet: output at the high resolution, named errors for a wrong
//! low-resolution size or a non-integer scale, and a noise level that changes the output.

mod common;

use common::{assert_every_param_has_grad, bit_identical, max_diff, scratch_file};
use difflab_models::{
    LowresUpsample, SrUNet, SrUNetConfig, UNetConfig, UNetInputs, load_safetensors,
};
use tch::{Device, Kind, Tensor, nn};

const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);

fn config(upsample: LowresUpsample, scale_factor: Option<i64>) -> SrUNetConfig {
    let unet: UNetConfig = serde_json::from_str(
        r#"{"block_out_channels": [4, 8], "layers_per_block": 1, "norm_num_groups": 2,
            "attention": ["none", "linear"], "mid_attention": "full",
            "time_conditioning": "scale_shift", "time_embedding": {"dim": 8}}"#,
    )
    .expect("unet config");
    SrUNetConfig {
        unet,
        upsample,
        scale_factor,
        ..SrUNetConfig::default()
    }
}

fn build(config: &SrUNetConfig) -> (SrUNet, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SrUNet::new(&vs.root(), config).expect("build");
    (model, vs)
}

#[test]
fn output_has_the_high_resolution_shape() {
    tch::manual_seed(0);
    for upsample in [LowresUpsample::Bilinear, LowresUpsample::Bicubic] {
        let (model, vs) = build(&config(upsample, Some(2)));
        // conv_in reads x (3) and the upsampled low-resolution image (3).
        assert_eq!(vs.variables()["conv_in.weight"].size(), [4, 6, 3, 3]);
        assert!(
            vs.variables()
                .contains_key("lowres_noise_embedding.linear_1.weight")
        );
        let x = Tensor::randn([2, 3, 32, 32], FLOAT);
        let lowres = Tensor::randn([2, 3, 16, 16], FLOAT);
        let t = Tensor::from_slice(&[3i64, 900]);
        let float_level = Tensor::from_slice(&[0.0f32, 0.3]);
        let int_level = Tensor::from(250i64);
        for level in [&float_level, &int_level] {
            let out = model.forward(&x, &t, &lowres, &UNetInputs::noise_level(level), false);
            assert_eq!(out.size(), [2, 3, 32, 32], "{upsample:?}");
        }
        let summary = model.summary(32, 32).expect("summary");
        assert!(
            summary
                .rows
                .iter()
                .any(|r| r.name == "lowres_noise_embedding")
        );
        let stored: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(summary.total_params, stored);
    }
    // Without a fixed scale factor any integer factor works: 64 from 16.
    let (model, _vs) = build(&config(LowresUpsample::Bilinear, None));
    let out = model.forward(
        &Tensor::randn([1, 3, 64, 64], FLOAT),
        &Tensor::from(1i64),
        &Tensor::randn([1, 3, 16, 16], FLOAT),
        &UNetInputs::noise_level(&Tensor::from(0.5f32)),
        false,
    );
    assert_eq!(out.size(), [1, 3, 64, 64]);
}

#[test]
fn wrong_lowres_sizes_and_non_integer_scales_are_named() {
    let (fixed, _vs) = build(&config(LowresUpsample::Bilinear, Some(2)));
    let (free, _vs) = build(&config(LowresUpsample::Bicubic, None));
    let x = Tensor::zeros([2, 3, 32, 32], FLOAT);
    let t = Tensor::from(1i64);
    let level = Tensor::from(0.1f32);
    let cases: Vec<(&SrUNet, Vec<i64>, &str)> = vec![
        (&fixed, vec![2, 3, 8, 8], "scale_factor 2"),
        (&fixed, vec![2, 3, 12, 12], "integer factor"),
        (&free, vec![2, 3, 12, 12], "integer factor"),
        (&free, vec![2, 3, 16, 8], "integer factor"),
        (&free, vec![1, 3, 16, 16], "B = 2"),
        (&free, vec![2, 1, 16, 16], "[B, 3, h, w]"),
        (&free, vec![2, 3, 16], "[B, 3, h, w]"),
    ];
    for (model, shape, expected) in cases {
        let lowres = Tensor::zeros(shape.as_slice(), FLOAT);
        let msg = match model.try_forward(&x, &t, &lowres, &UNetInputs::noise_level(&level), false)
        {
            Ok(_) => panic!("lowres {shape:?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("`lowres`") && msg.contains(expected),
            "{shape:?}: {msg:?} lacks {expected:?}"
        );
    }
    // The noise level is checked and required.
    let lowres = Tensor::zeros([2, 3, 16, 16], FLOAT);
    let err = fixed
        .try_forward(
            &x,
            &t,
            &lowres,
            &UNetInputs::noise_level(&Tensor::from(1.5f32)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[0, 1]"), "{err}");
    let err = fixed
        .try_forward(&x, &t, &lowres, &UNetInputs::default(), false)
        .unwrap_err();
    assert!(err.to_string().contains("`lowres_noise_level`"), "{err}");
}

#[test]
fn bad_sr_configs_are_named() {
    let unknown = serde_json::from_str::<SrUNetConfig>(r#"{"upsample": "nearest"}"#).unwrap_err();
    assert!(unknown.to_string().contains("nearest"), "{unknown}");
    let unknown = serde_json::from_str::<SrUNetConfig>(r#"{"lowres_size": 64}"#).unwrap_err();
    assert!(unknown.to_string().contains("lowres_size"), "{unknown}");
    let parsed: SrUNetConfig = serde_json::from_str(
        r#"{"unet": {"in_channels": 1, "out_channels": 1}, "upsample": "bicubic", "scale_factor": 4}"#,
    )
    .expect("parses");
    assert_eq!(
        parsed.lowres_channels(),
        1,
        "defaults to the UNet's in_channels"
    );
    assert_eq!(parsed.unet_config().cond_channels, 1);

    let mut with_level = config(LowresUpsample::Bilinear, None);
    with_level.unet.lowres_noise_level = Some(Default::default());
    let mut zero_scale = config(LowresUpsample::Bilinear, None);
    zero_scale.scale_factor = Some(0);
    let mut zero_channels = config(LowresUpsample::Bilinear, None);
    zero_channels.lowres_channels = Some(0);
    let mut bad_unet = config(LowresUpsample::Bilinear, None);
    bad_unet.unet.norm_num_groups = 3;
    let mut bad_level = config(LowresUpsample::Bilinear, None);
    bad_level.noise_level.float_scale = -1.0;
    for (cfg, expected) in [
        (with_level, "invalid unet.lowres_noise_level"),
        (zero_scale, "invalid scale_factor = 0"),
        (zero_channels, "invalid lowres_channels = 0"),
        (bad_unet, "invalid unet.norm_num_groups = 3"),
        (bad_level, "invalid noise_level.float_scale = -1"),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let msg = match SrUNet::new(&vs.root(), &cfg) {
            Ok(_) => panic!("{cfg:?} built"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(expected), "{msg:?} lacks {expected:?}");
    }
}

#[test]
fn noise_level_changes_the_output_and_everything_trains() {
    tch::manual_seed(1);
    let (model, vs) = build(&config(LowresUpsample::Bicubic, Some(2)));
    let x = Tensor::randn([2, 3, 16, 16], FLOAT);
    let lowres = Tensor::randn([2, 3, 8, 8], FLOAT);
    let t = Tensor::from_slice(&[10i64, 10]);
    let run = |level: &Tensor| {
        tch::no_grad(|| model.forward(&x, &t, &lowres, &UNetInputs::noise_level(level), false))
    };
    let clean = run(&Tensor::from(0.0f32));
    assert!(max_diff(&clean, &run(&Tensor::from(0.5f32))) > 1e-6);
    assert!(max_diff(&run(&Tensor::from(0i64)), &run(&Tensor::from(250i64))) > 1e-6);
    // A float level s is coded as 1000·s by default: 0.25 and integer level 250 agree.
    assert!(max_diff(&run(&Tensor::from(0.25f32)), &run(&Tensor::from(250i64))) < 1e-5);
    // The low-resolution image matters too.
    let other = tch::no_grad(|| {
        model.forward(
            &x,
            &t,
            &lowres.zeros_like(),
            &UNetInputs::noise_level(&Tensor::from(0.0f32)),
            false,
        )
    });
    assert!(max_diff(&clean, &other) > 1e-6);

    let levels = Tensor::from_slice(&[0.1f32, 0.7]);
    let out = model.forward(&x, &t, &lowres, &UNetInputs::noise_level(&levels), true);
    out.square().mean(Kind::Float).backward();
    assert_every_param_has_grad(&vs, "SR-UNet");
}

#[test]
fn sr_unet_survives_a_safetensors_round_trip() {
    tch::manual_seed(2);
    let cfg = config(LowresUpsample::Bilinear, Some(2));
    let (model, vs) = build(&cfg);
    let path = scratch_file("sr_unet.safetensors");
    vs.save(&path).expect("save");
    tch::manual_seed(3);
    let (fresh, mut fresh_vs) = build(&cfg);
    load_safetensors(&mut fresh_vs, &path).expect("load");
    let x = Tensor::randn([1, 3, 16, 16], FLOAT);
    let lowres = Tensor::randn([1, 3, 8, 8], FLOAT);
    let (t, level) = (Tensor::from(5i64), Tensor::from(0.2f32));
    let a =
        tch::no_grad(|| model.forward(&x, &t, &lowres, &UNetInputs::noise_level(&level), false));
    let b =
        tch::no_grad(|| fresh.forward(&x, &t, &lowres, &UNetInputs::noise_level(&level), false));
    assert!(bit_identical(&a, &b));
}
