//! `difflab config check`, `difflab model summary` and `difflab export --diffusers` end to end.

mod common;

use common::{difflab, difflab_ok, fixture, made_dir, s, stderr, stdout};
use std::path::Path;

use difflab_models::{UNet, UNetConfig, UNetInputs, load_diffusers_unet};
use tch::{Device, Kind, Tensor, nn};

const CONFIG: &str = "\
name: tiny
model:
  kind: unet
  in_channels: 3
  out_channels: 3
  block_out_channels: [8, 16]
  attention: [none, full]
  layers_per_block: 1
  norm_num_groups: 4
";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn config_check_prints_the_resolved_config_and_names_errors() {
    let dir = made_dir("check");
    let good = write(&dir, "tiny.yaml", CONFIG);
    let out = difflab_ok(&["config", "check", &good, "--set", "schedule.kind=cosine"]);
    let yaml = stdout(&out);
    assert!(
        yaml.contains("kind: cosine") && yaml.contains("timesteps: 1000"),
        "defaults filled in:\n{yaml}"
    );

    let bad = write(
        &dir,
        "bad.yaml",
        &CONFIG.replace("layers_per_block", "layers_per_blok"),
    );
    let out = difflab(&["config", "check", &bad]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("bad.yaml") && err.contains("layers_per_blok"),
        "{err}"
    );

    let out = difflab(&[
        "config",
        "check",
        dir.join("missing.yaml").to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("missing.yaml"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn model_summary_lists_blocks_and_the_parameter_total() {
    let dir = made_dir("summary");
    let cfg = write(&dir, "tiny.yaml", CONFIG);
    let out = difflab_ok(&["model", "summary", "--config", &cfg, "--resolution", "16"]);
    let table = stdout(&out);
    let vs = nn::VarStore::new(Device::Cpu);
    let config: UNetConfig = serde_json::from_value(serde_json::json!({
        "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "attention": ["none", "full"],
        "layers_per_block": 1, "norm_num_groups": 4
    }))
    .unwrap();
    let total = UNet::new(&vs.root(), &config).unwrap().num_parameters();
    assert!(
        table.contains(&total.to_string()) || table.contains(&group_thousands(total)),
        "total {total} in:\n{table}"
    );
    assert!(
        table.contains("conv_in") && table.contains("mid"),
        "{table}"
    );

    difflab_ok(&[
        "model",
        "summary",
        "--diffusers-model",
        fixture("uncond").to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).unwrap();
}

fn group_thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn export_writes_a_folder_that_loads_back_with_the_same_outputs() {
    let dir = made_dir("export");
    let cfg = write(&dir, "tiny.yaml", CONFIG);
    let config: UNetConfig = serde_json::from_value(serde_json::json!({
        "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "attention": ["none", "full"],
        "layers_per_block": 1, "norm_num_groups": 4
    }))
    .unwrap();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), &config).unwrap();
    let weights = dir.join("model.safetensors");
    vs.save(&weights).unwrap();

    // `difflab export --diffusers <to> --config <config> --weights <weights>`, then `extra`.
    let export = |to: &Path, config: &str, extra: &[&str]| {
        let mut args = vec!["export", "--diffusers", s(to), "--config", config];
        args.extend(["--weights", s(&weights)]);
        args.extend(extra);
        difflab(&args)
    };
    let out_dir = dir.join("diffusers");
    let out = export(&out_dir, &cfg, &["--sample-size", "16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (reloaded, _vs, dconfig) = load_diffusers_unet(&out_dir, Device::Cpu).unwrap();
    assert_eq!(dconfig.sample_size(), Some((16, 16)));
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 700]);
    let diff = (unet.forward(&x, &t, &UNetInputs::classes(None), false)
        - reloaded.forward(&x, &t, &UNetInputs::classes(None), false))
    .abs()
    .max()
    .double_value(&[]);
    assert!(diff < 1e-6, "exported model differs by {diff}");

    // Refuses to overwrite, naming the folder.
    let again = export(&out_dir, &cfg, &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("diffusers"), "names the folder");

    // A config diffusers cannot express is refused with the key.
    let linear = write(
        &dir,
        "linear.yaml",
        &CONFIG.replace("[none, full]", "[none, linear]"),
    );
    let out = export(&dir.join("x"), &linear, &[]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("linear"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
