//! The UNet reproduces diffusers' `UNet2DModel` outputs on the golden fixtures.

use std::collections::HashMap;
use std::path::PathBuf;

use difflab_models::{UNetInputs, load_diffusers_unet};
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/unet2d")
        .join(name)
}

fn check(name: &str) {
    let dir = fixture(name);
    let (unet, vs, _config) = load_diffusers_unet(&dir, Device::Cpu).expect("load fixture");
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("io.safetensors"))
        .expect("read io.safetensors")
        .into_iter()
        .collect();
    let labels = io.get("class_labels");
    let out = tch::no_grad(|| {
        unet.forward(
            &io["sample"],
            &io["timestep"],
            &UNetInputs::classes(labels),
            false,
        )
    });
    let reference = &io["output"];
    assert_eq!(out.size(), reference.size());
    let max_diff = (&out - reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]);
    println!("{name}: max |out - reference| = {max_diff:.3e} (max |reference| = {scale:.3})");
    assert!(
        max_diff < 1e-4,
        "{name}: max abs diff {max_diff:.3e} >= 1e-4"
    );
    // Every parameter in the file was used, and the summary counts all of them.
    let stored: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(unet.num_parameters(), stored);
}

#[test]
fn uncond_matches_diffusers() {
    check("uncond");
}

#[test]
fn classcond_scaleshift_matches_diffusers() {
    check("classcond_scaleshift");
}
