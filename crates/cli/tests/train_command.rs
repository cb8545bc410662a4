//! `difflab train` end to end: shipped configs validate, a tiny run trains and writes its
//! artifacts, Ctrl-C checkpoints and prints the resume command, bad input exits non-zero.

mod common;

use common::{difflab, repo, temp_dir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_shipped_config_passes_config_check() {
    let mut checked = 0;
    let configs = ["configs", "configs/quality"]
        .iter()
        .flat_map(|d| std::fs::read_dir(repo().join(d)).unwrap());
    for entry in configs {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = difflab(&["config", "check", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "quickstart, fashion-mnist, toy2d, cold-blur, anime, anime-sr, the quality recipes"
    );
}

const TINY: [&str; 12] = [
    "--set",
    "data.resolution=8",
    "--set",
    "data.shapes.num_images=32",
    "--set",
    "model.block_out_channels=[8, 16]",
    "--set",
    "model.attention=[none, none]",
    "--set",
    "model.norm_num_groups=4",
    "--set",
    "training.batch_size=4",
];

#[test]
fn a_tiny_quickstart_trains_and_writes_its_run_directory() {
    let out_dir = temp_dir("tiny");
    let config = repo().join("configs/quickstart.yaml");
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend(TINY);
    args.extend([
        "--set",
        "training.steps=3",
        "--set",
        "sampler.steps=3",
        "--set",
        "training.preview_images=4",
    ]);
    let run = difflab(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in [
        "config.yaml",
        "checkpoints/latest",
        "checkpoints/step-3/model.safetensors",
        "checkpoints/step-3/ema.safetensors",
        "checkpoints/step-3/optimizer.safetensors",
        "checkpoints/step-3/state.json",
        "samples/step-000003.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} missing");
    }
    // The run samples from the CLI with its own config (EMA weights by default).
    let samples = out_dir.join("sampled");
    let sample = difflab(&[
        "sample",
        "--run",
        out_dir.to_str().unwrap(),
        "-n",
        "3",
        "--steps",
        "4",
        "--out",
        samples.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        sample.status.success(),
        "{}",
        String::from_utf8_lossy(&sample.stderr)
    );
    assert!(samples.join("000002.png").exists() && samples.join("grid.png").exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(samples.join("sample.json")).unwrap()).unwrap();
    assert_eq!(record["stages"][0]["model"]["weights"], "ema");
    assert_eq!(
        record["stages"][0]["timesteps"].as_array().unwrap().len(),
        4
    );
    // Running again without --resume/--overwrite refuses and leaves the run alone.
    let again = difflab(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // A run branched from this one's weights says where it started.
    let branch = out_dir.join("branch");
    let mut branch_args = args.clone();
    branch_args[4] = branch.to_str().unwrap();
    let latest = out_dir.join("checkpoints/latest");
    branch_args.extend(["--init", latest.to_str().unwrap()]);
    let branched = difflab(&branch_args);
    let said = String::from_utf8_lossy(&branched.stderr);
    assert!(branched.status.success(), "{said}");
    assert!(
        said.contains("from weights") && !said.contains("from scratch"),
        "{said}"
    );
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_prints_the_resume_command() {
    let out_dir = temp_dir("sigint");
    let config = repo().join("configs/quickstart.yaml");
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend(TINY);
    args.extend([
        "--set",
        "training.steps=100000",
        "--set",
        "training.checkpoint_every=100000",
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_difflab"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has started (config.yaml written), then interrupt.
    let start = Instant::now();
    while !out_dir.join("config.yaml").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit code {:?}: {err}",
        out.status.code()
    );
    assert!(err.contains("--resume"), "resume command printed: {err}");
    let latest = std::fs::read_to_string(out_dir.join("checkpoints/latest")).unwrap();
    assert!(
        latest.trim().starts_with("step-"),
        "checkpoint written on interrupt"
    );
    assert!(
        Path::new(&out_dir.join("checkpoints").join(latest.trim()))
            .join("model.safetensors")
            .exists()
    );
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.yaml");
    std::fs::write(
        &typo,
        "name: x\nmodel:\n  kind: unet\ntraining:\n  stepz: 3\n",
    )
    .unwrap();
    let out = difflab(&[
        "train",
        "--config",
        typo.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("typo.yaml") && err.contains("stepz") && err.contains("line 5"),
        "{err}"
    );
    let config = repo().join("configs/quickstart.yaml");
    let out = difflab(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "data.kind=folder",
        "--set",
        "data.path=/no/such/folder",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("/no/such/folder"), "{err}");
    assert!(!dir.join("run").exists(), "nothing written");
    std::fs::remove_dir_all(dir).unwrap();
}
