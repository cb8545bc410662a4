//! `difflab train` end to end: shipped configs validate, a tiny run trains and writes its
//! artifacts, Ctrl-C checkpoints and prints the resume command, bad input exits non-zero.

mod common;

use common::{
    TINY_QUICKSTART, difflab, difflab_fails, difflab_ok, repo, s, stderr, temp_dir, train_args,
};
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
    // A checkpoint of the run, by name; another run's checkpoint is not one of its.
    let by_name = out_dir.join("sampled-step-3");
    difflab_ok(&[
        "sample",
        "--run",
        s(&out_dir),
        "--checkpoint",
        "step-3",
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        s(&by_name),
        "--device",
        "cpu",
    ]);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(by_name.join("sample.json")).unwrap()).unwrap();
    assert!(
        record["stages"][0]["model"]["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("step-3"),
        "{record}"
    );
    let elsewhere = temp_dir("tiny-other-run");
    std::fs::create_dir_all(elsewhere.join("checkpoints")).unwrap();
    difflab_fails(
        &[
            "sample",
            "--run",
            s(&elsewhere),
            "--checkpoint",
            s(&out_dir.join("checkpoints/step-3")),
            "--out",
            s(&out_dir.join("nope")),
        ],
        "is not a checkpoint of --run",
    );
    let _ = std::fs::remove_dir_all(elsewhere);

    // --resume without --config continues with the run's own config.yaml, and restores it
    // from the checkpoint when it was deleted.
    let resume = |steps: &str| {
        difflab_ok(&[
            "train",
            "--out",
            s(&out_dir),
            "--resume",
            "--device",
            "cpu",
            "--set",
            &format!("training.steps={steps}"),
        ])
    };
    resume("4");
    std::fs::remove_file(out_dir.join("config.yaml")).unwrap();
    let said = stderr(&resume("5"));
    assert!(said.contains("was missing"), "{said}");
    assert!(
        std::fs::read_to_string(out_dir.join("config.yaml"))
            .unwrap()
            .contains("steps: 5")
    );
    // A change that makes it another experiment is refused, naming the key.
    difflab_fails(
        &[
            "train",
            "--out",
            s(&out_dir),
            "--resume",
            "--set",
            "training.optimizer.lr=0.5",
            "--set",
            "training.steps=6",
        ],
        "training.optimizer.lr",
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

/// A `difflab` child whose stderr lines arrive on a channel as they come.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    start: Instant,
    err: String,
}

impl Child {
    fn spawn(args: &[String]) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_difflab"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        let stderr = process.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            process,
            lines,
            reader,
            start: Instant::now(),
            err: String::new(),
        }
    }

    /// Wait for the trainer's "training <name> (… parameters) on …" line: it comes once the
    /// Ctrl-C handler is installed and the loop is about to run its first step.
    fn wait_until_training(&mut self) {
        self.wait_for_line("training ");
    }

    /// Wait for a stderr line that starts with `prefix`.
    fn wait_for_line(&mut self, prefix: &str) {
        loop {
            let left = PATIENCE.saturating_sub(self.start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.starts_with(prefix);
                    self.err.push_str(&line);
                    self.err.push('\n');
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.process.kill();
                    panic!("no line {prefix:?} within {PATIENCE:?}: {}", self.err);
                }
            }
        }
    }

    fn interrupt(&self) {
        let killed = Command::new("kill")
            .args(["-INT", &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// The rest of stderr until the child exits, and how it exited.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        loop {
            let left = PATIENCE.saturating_sub(self.start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.err.push_str(&line);
                    self.err.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.process.kill();
                    panic!("no exit within {PATIENCE:?} of the start: {}", self.err);
                }
            }
        }
        self.reader.join().unwrap();
        (self.process.wait().unwrap(), self.err)
    }
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_prints_the_resume_command() {
    let out_dir = temp_dir("sigint");
    let args = tiny_quickstart(
        &out_dir,
        &["training.steps=100000", "training.checkpoint_every=100000"],
    );
    let mut child = Child::spawn(&args);
    child.wait_until_training();
    // One writer per run folder: a second trainer on it fails at once, naming this one.
    let second = difflab(&["train", "--out", s(&out_dir), "--resume", "--device", "cpu"]);
    let said = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(
        said.contains("in use by process") && said.contains(&child.process.id().to_string()),
        "{said}"
    );
    child.interrupt();
    let (status, err) = child.finish();
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

/// A second Ctrl-C ends the process at once (exit 130, one message), never with a crash, and
/// the run resumes from its last complete checkpoint.
#[test]
fn a_second_ctrl_c_exits_at_once_without_a_crash() {
    use std::os::unix::process::ExitStatusExt;
    let out_dir = temp_dir("sigint-twice");
    // The quickstart's own model: steps long enough for both interrupts to land in one.
    let args = train_args(
        "configs/quickstart.yaml",
        &out_dir,
        &["training.steps=100000", "training.checkpoint_every=1"],
    );
    let mut child = Child::spawn(&args);
    child.wait_until_training();
    child.interrupt();
    child.wait_for_line("interrupt: finishing this step");
    child.interrupt();
    let (status, err) = child.finish();
    assert_eq!(status.signal(), None, "killed by a signal: {err}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(err.matches("second interrupt").count(), 1, "{err}");
    // The run goes on from what is complete (if the exit came after its first checkpoint).
    if let Ok(latest) = std::fs::read_to_string(out_dir.join("checkpoints/latest")) {
        let step: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
        let steps = format!("training.steps={}", step + 1);
        let resumed = difflab_ok(&[
            "train",
            "--out",
            s(&out_dir),
            "--resume",
            "--device",
            "cpu",
            "--set",
            &steps,
        ]);
        let said = stderr(&resumed);
        assert!(said.contains(&format!("done: step {}", step + 1)), "{said}");
    }
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
