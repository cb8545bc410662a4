//! `difflab train` end to end: shipped configs validate, a tiny run trains and writes its
//! artifacts, Ctrl-C checkpoints and prints the resume command, bad input exits non-zero.

mod common;

use common::{TINY_QUICKSTART, difflab, difflab_ok, repo, s, stderr, temp_dir, train_args};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
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
            difflab_ok(&["config", "check", path.to_str().unwrap()]);
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "quickstart, fashion-mnist, toy2d, cold-blur, anime, anime-sr, the quality recipes"
    );
}

/// The tiny quickstart run of these tests: [`TINY_QUICKSTART`] plus `sets`.
fn tiny_quickstart(out: &Path, sets: &[&str]) -> Vec<String> {
    let sets: Vec<&str> = TINY_QUICKSTART.iter().chain(sets).copied().collect();
    train_args("configs/quickstart.yaml", out, &sets)
}

#[test]
fn a_tiny_quickstart_trains_and_writes_its_run_directory() {
    let out_dir = temp_dir("tiny");
    let sets = [
        "training.steps=3",
        "sampler.steps=3",
        "training.preview_images=4",
    ];
    let args = tiny_quickstart(&out_dir, &sets);
    difflab_ok(&args);
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
    difflab_ok(&[
        "sample",
        "--run",
        s(&out_dir),
        "-n",
        "3",
        "--steps",
        "4",
        "--out",
        s(&samples),
        "--device",
        "cpu",
    ]);
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
    assert!(stderr(&again).contains("--resume"));
    // A run branched from this one's weights says where it started.
    let branch = out_dir.join("branch");
    let latest = out_dir.join("checkpoints/latest");
    let mut branch_args = tiny_quickstart(&branch, &sets);
    branch_args.extend(["--init".to_string(), s(&latest).to_string()]);
    let branched = difflab(&branch_args);
    let said = stderr(&branched);
    assert!(branched.status.success(), "{said}");
    assert!(
        said.contains("from weights") && !said.contains("from scratch"),
        "{said}"
    );
    std::fs::remove_dir_all(out_dir).unwrap();
}

/// How long a child may take to reach a point of the test (generous: a slow 2-core CI machine
/// running other tests beside it).
const PATIENCE: Duration = Duration::from_secs(600);

#[test]
fn ctrl_c_writes_a_checkpoint_and_prints_the_resume_command() {
    let out_dir = temp_dir("sigint");
    let args = tiny_quickstart(
        &out_dir,
        &["training.steps=100000", "training.checkpoint_every=100000"],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_difflab"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every stderr line, as it comes, to this thread.
    let (lines, received) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The trainer prints "training <name> (… parameters) on …" once the Ctrl-C handler is
    // installed and the loop is about to run its first step: interrupt then, not after a
    // guessed delay.
    let mut err = String::new();
    let start = Instant::now();
    loop {
        let left = PATIENCE.saturating_sub(start.elapsed());
        match received.recv_timeout(left) {
            Ok(line) => {
                let ready = line.starts_with("training ");
                err.push_str(&line);
                err.push('\n');
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("training did not start within {PATIENCE:?}: {err}");
            }
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The rest of stderr, until the child closes it by exiting.
    loop {
        let left = PATIENCE.saturating_sub(start.elapsed());
        match received.recv_timeout(left) {
            Ok(line) => {
                err.push_str(&line);
                err.push('\n');
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("no exit within {PATIENCE:?} of the start after Ctrl-C: {err}");
            }
        }
    }
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit code {:?}: {err}", status.code());
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
    let err = stderr(&out);
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
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("/no/such/folder"), "{err}");
    assert!(!dir.join("run").exists(), "nothing written");
    std::fs::remove_dir_all(dir).unwrap();
}
