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

/// `difflab sample` on the golden diffusers fixture with per-image noise, 12 images in
/// batches of 2, into `out`, plus `extra` flags.
fn sample_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let model = fixture("uncond");
    let mut args: Vec<String> = [
        "sample",
        "--diffusers-model",
        model.to_str().unwrap(),
        "--steps",
        "40",
        "-n",
        "12",
        "--batch-size",
        "2",
        "--noise",
        "per-image",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn file_bytes(dir: &Path, names: &[String]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect()
}

/// Outputs never mix: a used folder is refused, `--overwrite` removes only what the previous
/// job wrote, a killed job keeps the images it made, and `--resume` finishes it with exactly
/// the images an uninterrupted job makes.
#[test]
fn outputs_never_mix_and_a_killed_job_resumes_exactly() {
    let names: Vec<String> = (0..12)
        .map(|i| format!("{i:06}.png"))
        .chain(["grid.png".to_string()])
        .collect();
    let whole = temp_dir("sample-whole");
    difflab_ok(&sample_args(&whole, &[]));
    let reference = file_bytes(&whole, &names);

    // The same command again: refused, nothing touched.
    let err = difflab_fails(&sample_args(&whole, &[]), "is not empty");
    assert!(
        err.contains("--overwrite") && err.contains("--resume"),
        "{err}"
    );
    // --overwrite replaces the job's files and keeps the user's.
    std::fs::write(whole.join("notes.txt"), "mine").unwrap();
    difflab_ok(&sample_args(&whole, &["--overwrite"]));
    assert_eq!(
        std::fs::read_to_string(whole.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        file_bytes(&whole, &names),
        reference,
        "same command, same images"
    );
    // A folder difflab did not write is never overwritten.
    let foreign = temp_dir("sample-foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("000000.png"), "not ours").unwrap();
    difflab_fails(&sample_args(&foreign, &["--overwrite"]), "no sample.json");
    assert_eq!(
        std::fs::read_to_string(foreign.join("000000.png")).unwrap(),
        "not ours"
    );

    // Kill a job once it has written two batches.
    let cut = temp_dir("sample-cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_difflab"))
        .args(sample_args(&cut, &[]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !cut.join("000003.png").exists() {
        assert!(started.elapsed().as_secs() < 300, "no images after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cut.join("sample.json")).unwrap()).unwrap();
    let kept: Vec<&str> = record["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(kept.contains(&"000003.png"), "{record}");
    if !cut.join("grid.png").exists() {
        assert_eq!(record["status"], "running", "{record}");
    }
    // A different job is not mixed into it; the same one finishes exactly.
    difflab_fails(
        &sample_args(&cut, &["--resume", "--seed", "1"]),
        "different job",
    );
    difflab_ok(&sample_args(&cut, &["--resume"]));
    assert_eq!(
        file_bytes(&cut, &names),
        reference,
        "resumed == uninterrupted"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cut.join("sample.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "complete");

    // Torch-global noise cannot be resumed exactly: said so.
    let global = temp_dir("sample-global");
    let torch = |extra: &[&str]| {
        let mut a = sample_args(&global, extra);
        let i = a.iter().position(|x| x == "per-image").unwrap();
        a[i] = "torch-global".into();
        a
    };
    difflab_ok(&torch(&[]));
    std::fs::remove_file(global.join("000011.png")).unwrap();
    std::fs::remove_file(global.join("000010.png")).unwrap();
    difflab_fails(&torch(&["--resume"]), "torch-global");
    for d in [whole, foreign, cut, global] {
        let _ = std::fs::remove_dir_all(d);
    }
}
