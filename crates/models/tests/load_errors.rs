//! Unsupported configs, bad weight files and missing files fail with errors that name the
//! key/value or tensor and the file.

use std::path::{Path, PathBuf};

use difflab_models::{ModelError, load_diffusers_unet};
use serde_json::{Value, json};
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/unet2d")
        .join(name)
}

/// A fresh copy of the `classcond_scaleshift` fixture folder under the test tmp dir.
fn scratch_copy(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("models_load_errors_{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture("classcond_scaleshift").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, key: &str, value: Value) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> ModelError {
    match load_diffusers_unet(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn unsupported_config_values_are_named() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "down_block_types",
            json!(["DownBlock2D", "CrossAttnDownBlock2D"]),
            "down_block_types[1] = \"CrossAttnDownBlock2D\"",
        ),
        (
            "up_block_types",
            json!(["SkipUpBlock2D", "UpBlock2D"]),
            "up_block_types[0] = \"SkipUpBlock2D\"",
        ),
        (
            "time_embedding_type",
            json!("fourier"),
            "time_embedding_type = \"fourier\"",
        ),
        (
            "class_embed_type",
            json!("timestep"),
            "class_embed_type = \"timestep\"",
        ),
        (
            "resnet_time_scale_shift",
            json!("spatial"),
            "resnet_time_scale_shift = \"spatial\"",
        ),
        (
            "upsample_type",
            json!("resnet"),
            "upsample_type = \"resnet\"",
        ),
        (
            "downsample_type",
            json!("resnet"),
            "downsample_type = \"resnet\"",
        ),
        ("act_fn", json!("gelu"), "act_fn = \"gelu\""),
        (
            "center_input_sample",
            json!(true),
            "center_input_sample = true",
        ),
        (
            "mid_block_type",
            json!("UNetMidBlock2DSimpleCrossAttn"),
            "mid_block_type = ",
        ),
        ("norm_num_groups", json!(7), "norm_num_groups = 7"),
        (
            "attention_legacy_order",
            json!(true),
            "attention_legacy_order = true",
        ),
        (
            "layers_per_block",
            json!("two"),
            "layers_per_block = \"two\"",
        ),
    ];
    for (key, value, expected) in cases {
        let dir = scratch_copy(&format!("cfg_{key}"));
        edit_config(&dir, key, value);
        let err = load_err(&dir);
        let msg = err.to_string();
        println!("{msg}");
        assert!(
            msg.contains(expected),
            "{key}: message {msg:?} lacks {expected:?}"
        );
        assert!(
            msg.contains("config.json"),
            "{key}: message {msg:?} lacks the file"
        );
        assert!(
            matches!(
                err.root(),
                ModelError::Unsupported { .. } | ModelError::InvalidConfig { .. }
            ),
            "{key}: {err:?}"
        );
    }
}

#[test]
fn metadata_keys_are_accepted_and_add_attention_false_is_supported() {
    let dir = scratch_copy("meta");
    edit_config(&dir, "_name_or_path", json!("somewhere"));
    let (_, _, config) = load_diffusers_unet(&dir, Device::Cpu).expect("metadata keys are fine");
    assert_eq!(config.metadata["_class_name"], json!("UNet2DModel"));
    // Without mid attention the file's mid-attention tensors are unexpected.
    edit_config(&dir, "add_attention", json!(false));
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("unexpected tensor `mid_block.attentions.0."),
        "{msg}"
    );
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

#[test]
fn bad_weights_are_named() {
    let dir = scratch_copy("shape");
    rewrite_weights(&dir, |ts| {
        let entry = ts
            .iter_mut()
            .find(|(n, _)| n == "up_blocks.0.resnets.1.conv1.weight")
            .unwrap();
        entry.1 = Tensor::zeros([32, 60, 3, 3], (tch::Kind::Float, Device::Cpu));
    });
    let msg = load_err(&dir).to_string();
    println!("{msg}");
    for part in [
        "up_blocks.0.resnets.1.conv1.weight",
        "[32, 60, 3, 3]",
        "[32, 64, 3, 3]",
        "diffusion_pytorch_model.safetensors",
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }

    let dir = scratch_copy("missing_tensor");
    rewrite_weights(&dir, |ts| ts.retain(|(n, _)| n != "class_embedding.weight"));
    let err = load_err(&dir);
    assert!(
        matches!(err, ModelError::MissingTensor { ref name, .. } if name == "class_embedding.weight"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    let dir = scratch_copy("unexpected_tensor");
    rewrite_weights(&dir, |ts| {
        ts.push((
            "extra.weight".into(),
            Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)),
        ));
    });
    let err = load_err(&dir);
    assert!(
        matches!(err, ModelError::UnexpectedTensor { ref name, .. } if name == "extra.weight"),
        "{err}"
    );
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let dir = scratch_copy("no_weights");
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    let dir = scratch_copy("no_config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = scratch_copy("bad_json");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ModelError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = scratch_copy("bad_weights");
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), b"garbage").unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ModelError::Parse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}
