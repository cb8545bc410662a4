//! Exporting a UNet as a diffusers `UNet2DModel` folder: the golden fixtures round-trip to the
//! same config and identical weight files, a native model reloads with identical outputs, and
//! configs diffusers cannot express or occupied output folders are refused with named errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use difflab_models::{
    DiffusersUNetConfig, ModelError, UNet, UNetConfig, UNetInputs, export_diffusers_unet,
    load_diffusers_unet,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/unet2d")
        .join(name)
}

/// A path under the test tmp dir that does not exist yet.
fn fresh_out(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("models_export_{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn roundtrip_fixture(name: &str) {
    let src = fixture(name);
    let (unet, vs, config) = load_diffusers_unet(&src, Device::Cpu).expect("load fixture");
    let sample_size = config.sample_size().expect("fixture has sample_size").0;
    let out = fresh_out(name);
    export_diffusers_unet(&unet, &vs, &out, sample_size).expect("export");

    // config.json: exactly the fixture's keys, with the same values.
    let expected = read_json(&src.join("config.json"));
    let written = read_json(&out.join("config.json"));
    let (Value::Object(expected), Value::Object(written)) = (&expected, &written) else {
        panic!("config.json is not an object");
    };
    let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(written), keys(expected), "{name}: config.json keys");
    for (key, value) in expected {
        assert_eq!(&written[key], value, "{name}: config.json `{key}`");
    }

    // Weights: the same file, byte for byte (Python safetensors' layout), hence the same
    // tensors under the same names.
    let weights = "diffusion_pytorch_model.safetensors";
    let a = read_tensors(&src.join(weights));
    let b = read_tensors(&out.join(weights));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{name}: tensor names"
    );
    for (key, t) in &a {
        assert_eq!(b[key].kind(), Kind::Float, "{name}: {key} dtype");
        assert!(t.equal(&b[key]), "{name}: tensor {key} differs");
    }
    let bytes = |dir: &Path| std::fs::read(dir.join(weights)).unwrap();
    assert!(
        bytes(&src) == bytes(&out),
        "{name}: weight file differs from the fixture's bytes"
    );

    // No temporary folder is left behind.
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("models_export_{name}.tmp-")))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn uncond_fixture_round_trips() {
    roundtrip_fixture("uncond");
}

#[test]
fn classcond_scaleshift_fixture_round_trips() {
    roundtrip_fixture("classcond_scaleshift");
}

/// A native config using every option diffusers can express, at non-default values.
fn expressible(scale_shift: bool) -> UNetConfig {
    serde_json::from_value(serde_json::json!({
        "in_channels": 2,
        "out_channels": 2,
        "base_channels": 8,
        "channel_mult": [1, 2, 2],
        "layers_per_block": 1,
        "attention": ["none", "full", "none"],
        "up_attention": ["full", "none", "none"],
        "mid_attention": "full",
        "mid_attention_norm": true,
        "attention_head_dim": 4,
        "norm_num_groups": 4,
        "norm_eps": 1e-6,
        "time_embedding": {"flip_sin_to_cos": false, "freq_shift": 1.0, "dim": 24},
        "time_conditioning": if scale_shift { "scale_shift" } else { "add" },
        "num_classes": 3,
        "dropout": 0.1,
        "downsample_padding": 0,
        "mid_block_scale_factor": std::f64::consts::SQRT_2,
        "learned_variance": true
    }))
    .expect("config parses")
}

/// Build `config` with seeded random parameters (norm weights and biases perturbed too, so
/// that no two same-shaped tensors are interchangeable).
fn random_unet(config: &UNetConfig, seed: i64) -> (UNet, nn::VarStore) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), config).expect("build");
    tch::no_grad(|| {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        for mut v in vars.into_values() {
            let noise = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.1;
            let _ = v.g_add_(&noise);
        }
    });
    (unet, vs)
}

fn native_round_trip(scale_shift: bool) {
    let config = expressible(scale_shift);
    let (unet, vs) = random_unet(&config, 7);
    let out = fresh_out(&format!("native_{scale_shift}"));
    export_diffusers_unet(&unet, &vs, &out, 16).expect("export");

    let (reloaded, _vs2, diffusers) = load_diffusers_unet(&out, Device::Cpu).expect("reload");
    assert_eq!(
        diffusers.out_channels, 4,
        "learned variance doubles out_channels"
    );
    assert_eq!(
        diffusers.down_block_types,
        ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    );
    assert_eq!(
        diffusers.up_block_types,
        ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]
    );
    assert_eq!(diffusers.block_out_channels, [8, 16, 16]);
    assert_eq!(diffusers.sample_size(), Some((16, 16)));
    assert_eq!(reloaded.num_parameters(), unet.num_parameters());

    tch::manual_seed(11);
    let x = Tensor::randn([2, 2, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 871]);
    let y = Tensor::from_slice(&[2i64, 0]);
    let (a, b) = tch::no_grad(|| {
        (
            unet.forward(&x, &t, &UNetInputs::classes(Some(&y)), false),
            reloaded.forward(&x, &t, &UNetInputs::classes(Some(&y)), false),
        )
    });
    assert_eq!(a.size(), [2, 4, 16, 16]);
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-6,
        "scale_shift={scale_shift}: max |diff| = {diff:e}"
    );
}

#[test]
fn native_scale_shift_model_reloads_with_identical_outputs() {
    native_round_trip(true);
}

#[test]
fn native_additive_model_reloads_with_identical_outputs() {
    native_round_trip(false);
}

#[test]
fn from_unet_config_maps_the_middle_attention_norm() {
    // AdaGN + normalised middle attention needs an explicit attn_norm_num_groups in diffusers.
    let c = DiffusersUNetConfig::from_unet_config(&expressible(true), 16).unwrap();
    assert_eq!(c.attn_norm_num_groups, Some(4));
    assert_eq!(c.resnet_time_scale_shift, "scale_shift");
    let back = c.to_unet_config().unwrap();
    assert!(back.mid_attention_norm);
    // Additive conditioning normalises by default: null.
    let c = DiffusersUNetConfig::from_unet_config(&expressible(false), 16).unwrap();
    assert_eq!(c.attn_norm_num_groups, None);
    // AdaGN without the norm: null too.
    let mut native = expressible(true);
    native.mid_attention_norm = false;
    let c = DiffusersUNetConfig::from_unet_config(&native, 16).unwrap();
    assert_eq!(c.attn_norm_num_groups, None);
    assert!(!c.to_unet_config().unwrap().mid_attention_norm);
}

fn export_err(config: &UNetConfig, tag: &str) -> (ModelError, PathBuf) {
    let (unet, vs) = random_unet(config, 0);
    let out = fresh_out(tag);
    let err = export_diffusers_unet(&unet, &vs, &out, 16).expect_err("export should fail");
    assert!(
        !out.exists(),
        "{tag}: a failed export created {}",
        out.display()
    );
    (err, out)
}

#[test]
fn inexpressible_configs_are_refused_naming_the_key() {
    type Edit = Box<dyn Fn(&mut UNetConfig)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "linear",
            Box::new(|c| {
                c.attention = serde_json::from_str(r#"["none", "linear", "none"]"#).unwrap()
            }),
            "cannot export to diffusers: attention[1] = linear has no diffusers equivalent",
        ),
        (
            "up_linear",
            Box::new(|c| {
                c.up_attention =
                    Some(serde_json::from_str(r#"["linear", "none", "none"]"#).unwrap())
            }),
            "up_attention[0] = linear",
        ),
        (
            "mid_linear",
            Box::new(|c| c.mid_attention = serde_json::from_str(r#""linear""#).unwrap()),
            "mid_attention = linear",
        ),
        (
            "null_class",
            Box::new(|c| c.null_class = true),
            "null_class = true",
        ),
        (
            "max_period",
            Box::new(|c| c.time_embedding.max_period = 1000.0),
            "time_embedding.max_period = 1000",
        ),
        (
            "sinusoid_dim",
            Box::new(|c| c.time_embedding.sinusoid_dim = Some(32)),
            "time_embedding.sinusoid_dim = 32",
        ),
        (
            "mid_norm",
            Box::new(|c| {
                c.time_conditioning = serde_json::from_str(r#""add""#).unwrap();
                c.mid_attention_norm = false;
            }),
            "mid_attention_norm = false",
        ),
    ];
    for (tag, edit, expected) in cases {
        let mut config = expressible(true);
        edit(&mut config);
        let (err, _) = export_err(&config, &format!("bad_{tag}"));
        assert!(
            matches!(err, ModelError::NotExportable { .. }),
            "{tag}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(expected), "{tag}: {message}");
        println!("{tag}: {message}");
    }
}

#[test]
fn conditioning_routes_are_refused_naming_the_key() {
    // Keys the exporter does not map must be at their defaults; set each route in turn.
    let cases = [
        (serde_json::json!({"label_dim": 4}), "label_dim = 4"),
        (serde_json::json!({"cond_channels": 3}), "cond_channels = 3"),
        (serde_json::json!({"context_dim": 5}), "context_dim = 5"),
        (
            serde_json::json!({"self_condition": true}),
            "self_condition = true",
        ),
        (
            serde_json::json!({"lowres_noise_level": {}}),
            "lowres_noise_level = {",
        ),
        (
            serde_json::json!({"resample": "resnet"}),
            "resample = resnet",
        ),
    ];
    for (patch, expected) in cases {
        let mut value = serde_json::to_value(expressible(false)).unwrap();
        for (key, v) in patch.as_object().unwrap() {
            value[key] = v.clone();
        }
        let config: UNetConfig = serde_json::from_value(value).expect("patched config parses");
        let err = DiffusersUNetConfig::from_unet_config(&config, 16).expect_err("must refuse");
        let message = err.to_string();
        assert!(
            matches!(err, ModelError::NotExportable { .. }),
            "{patch}: {err:?}"
        );
        assert!(message.contains(expected), "{patch}: {message}");
        println!("{message}");
    }
}

#[test]
fn existing_non_empty_output_is_refused() {
    let (unet, vs) = random_unet(&expressible(false), 0);

    let out = fresh_out("occupied");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = export_diffusers_unet(&unet, &vs, &out, 16).expect_err("must refuse");
    let message = err.to_string();
    assert!(matches!(err, ModelError::Write { .. }), "{err:?}");
    assert!(message.contains(&out.display().to_string()), "{message}");
    assert!(message.contains("not empty"), "{message}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );

    let file = fresh_out("occupied_file");
    std::fs::write(&file, "mine").unwrap();
    let err = export_diffusers_unet(&unet, &vs, &file, 16).expect_err("must refuse a file");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    // An empty folder is filled.
    let empty = fresh_out("empty");
    std::fs::create_dir_all(&empty).unwrap();
    export_diffusers_unet(&unet, &vs, &empty, 16).expect("export into an empty folder");
    load_diffusers_unet(&empty, Device::Cpu).expect("reload");
}

#[test]
fn a_unet_not_at_the_store_root_is_refused() {
    let config = expressible(false);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet::new(&(vs.root() / "model"), &config).expect("build");
    let out = fresh_out("subpath");
    let err = export_diffusers_unet(&unet, &vs, &out, 16).expect_err("must refuse");
    let message = err.to_string();
    assert!(message.contains("store's root"), "{message}");
    assert!(!out.exists());
}
