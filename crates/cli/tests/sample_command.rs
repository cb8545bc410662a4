//! `difflab sample --diffusers-model` end to end: reproduces diffusers' `DDIMPipeline` images
//! from the golden fixture, writes what it promises, and rejects bad requests clearly.

mod common;

#[path = "../../../tests/support/npy.rs"]
mod npy;

use common::{difflab_fails, difflab_ok, fixture, temp_dir};
use std::path::Path;

/// All images OUT/000000.png … as one NHWC u8 buffer.
fn read_images(dir: &Path, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            image::open(dir.join(format!("{i:06}.png")))
                .expect("png")
                .to_rgb8()
                .into_raw()
        })
        .collect()
}

#[test]
fn ddim_20_reproduces_the_diffusers_pipeline_images() {
    let out = temp_dir("golden");
    let model = fixture("uncond");
    difflab_ok(&[
        "sample",
        "--diffusers-model",
        model.to_str().unwrap(),
        "--sampler",
        "ddim",
        "--steps",
        "20",
        "--eta",
        "0",
        "-n",
        "4",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (shape, reference) = npy::read_npy_u8(&model.join("ddim_seed0_steps20_n4.npy"));
    assert_eq!(shape, [4, 16, 16, 3]);
    let ours = read_images(&out, 4);
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max()
        .unwrap();
    let differing = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
    assert!(
        worst <= 1,
        "max pixel diff {worst} ({differing} of {} values differ)",
        ours.len()
    );

    let grid = image::open(out.join("grid.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (2 + 2 * 18, 2 + 2 * 18),
        "2x2 grid with borders"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sample.json")).unwrap()).unwrap();
    assert_eq!(record["seed"], 0);
    assert_eq!(
        record["noise"], "torch-global",
        "diffusers models default to its noise"
    );
    let stage = &record["stages"][0];
    assert_eq!(stage["sampler"]["kind"], "ddim");
    assert_eq!(stage["timesteps"].as_array().unwrap().len(), 20);
    assert_eq!(stage["model"]["weights_sha256"].as_str().unwrap().len(), 64);

    // Batching bounds memory without changing the images (up to float rounding: libtorch picks
    // different matmul/conv kernels for different batch sizes).
    let batched = temp_dir("batched");
    difflab_ok(&[
        "sample",
        "--diffusers-model",
        model.to_str().unwrap(),
        "--steps",
        "20",
        "-n",
        "4",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--out",
        batched.to_str().unwrap(),
    ]);
    let rebatched = read_images(&batched, 4);
    let worst = rebatched
        .iter()
        .zip(&ours)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max()
        .unwrap();
    let differing = rebatched.iter().zip(&ours).filter(|(a, b)| a != b).count();
    assert!(
        worst <= 1 && differing * 50 < ours.len(),
        "--batch-size changed the images: max diff {worst}, {differing} values"
    );
    for dir in [out, batched] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn class_conditional_model_samples_a_requested_class() {
    let out = temp_dir("class");
    let model = fixture("classcond_scaleshift");
    difflab_ok(&[
        "sample",
        "--diffusers-model",
        model.to_str().unwrap(),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--class",
        "3",
        "-n",
        "2",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let img = image::open(out.join("000001.png")).unwrap();
    assert_eq!((img.width(), img.height()), (16, 16));
    assert_eq!(
        img.color(),
        image::ColorType::L8,
        "1-channel model writes grayscale PNGs"
    );
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn bad_requests_fail_with_a_clear_message() {
    let uncond = fixture("uncond");
    let classcond = fixture("classcond_scaleshift");
    let out = temp_dir("bad");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--diffusers-model",
                uncond.to_str().unwrap(),
                "--guidance",
                "2",
                "-n",
                "1",
            ],
            "needs a conditional model",
        ),
        (
            vec![
                "--diffusers-model",
                classcond.to_str().unwrap(),
                "--class",
                "10",
                "-n",
                "1",
            ],
            "out of range",
        ),
        (
            vec![
                "--diffusers-model",
                uncond.to_str().unwrap(),
                "--class",
                "1",
                "-n",
                "1",
            ],
            "not class-conditional",
        ),
        (
            vec!["--diffusers-model", "/no/such/model", "-n", "1"],
            "/no/such/model/config.json",
        ),
        (
            vec![
                "--diffusers-model",
                uncond.to_str().unwrap(),
                "--steps",
                "5000",
                "-n",
                "1",
            ],
            "sampler.steps = 5000",
        ),
        (
            vec![
                "--diffusers-model",
                uncond.to_str().unwrap(),
                "--sampler",
                "ddpm",
                "--eta",
                "0.5",
                "-n",
                "1",
            ],
            "sampler.eta = 0.5 does not apply to kind: ddpm",
        ),
        (
            vec!["--diffusers-model", uncond.to_str().unwrap(), "-n", "0"],
            "--num-images",
        ),
        (
            vec![
                "--diffusers-model",
                uncond.to_str().unwrap(),
                "--device",
                "cuda:7",
                "-n",
                "1",
            ],
            "cuda:7",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["sample", "--out", o];
        full.extend(args.iter().copied());
        difflab_fails(&full, needle);
    }
    assert!(
        !out.join("grid.png").exists(),
        "failed runs write no images"
    );
}
