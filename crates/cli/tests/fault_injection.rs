//! Fault injection: a training run that checkpoints every step is SIGKILLed at pseudo-random
//! moments (in the middle of steps, of checkpoint writes, of start-up) and restarted each time.
//! After every kill `checkpoints/latest` names a complete checkpoint whose every file loads,
//! and the run finished through all the kills ends with the same bits (weights, EMA and
//! optimizer state) as the same run never interrupted.

mod common;

use common::{TINY_QUICKSTART, difflab_ok, s, temp_dir, train_args};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 16;

fn args(run: &Path, extra: &[&str]) -> Vec<String> {
    let steps = format!("training.steps={STEPS}");
    let mut sets: Vec<&str> = TINY_QUICKSTART.to_vec();
    sets.extend([
        steps.as_str(),
        "training.checkpoint_every=1",
        "training.keep_last=2",
        "training.sample_every=0",
        "training.preview_images=4",
        "sampler.steps=2",
    ]);
    let mut args = train_args("configs/quickstart.yaml", run, &sets);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The tensors of a safetensors file, by name (panics naming the file if it does not load).
fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The step `latest` names, after checking that its checkpoint is complete and loads.
fn check_latest(run: &Path) -> Option<u64> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    let dir = run.join("checkpoints").join(latest.trim());
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        assert!(!tensors(&dir.join(file)).is_empty(), "{file} empty");
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let step = state["step"].as_u64().expect("state.json has its step");
    assert_eq!(latest.trim(), format!("step-{step}"));
    Some(step)
}

#[test]
fn sigkill_at_random_moments_never_breaks_latest_and_resume_stays_exact() {
    let straight = temp_dir("fault-straight");
    difflab_ok(&args(&straight, &[]));

    let run = temp_dir("fault-killed");
    // xorshift: the same kill moments on every machine and every run of the test.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut kills, mut finished) = (0, false);
    let start = Instant::now();
    while !finished {
        assert!(start.elapsed() < Duration::from_secs(900), "{kills} kills, not finished");
        let mode = match check_latest(&run) {
            Some(_) => "--resume",
            None => "--overwrite",
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_difflab"))
            .args(args(&run, &[mode]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // After 12 kills, let it finish.
        let wait = Duration::from_millis(100 + next() % 1500);
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if kills < 12 && Instant::now() >= deadline {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(status) = status {
            assert!(status.success(), "a run after {kills} kills failed: {status}");
            finished = check_latest(&run) == Some(STEPS);
        }
        // Whatever the moment of the kill, the latest checkpoint is complete.
        check_latest(&run);
    }
    assert!(kills >= 12, "only {kills} kills landed");
    let last = format!("checkpoints/step-{STEPS}");
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let (a, b) = (
            tensors(&straight.join(&last).join(file)),
            tensors(&run.join(&last).join(file)),
        );
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{file}: {name} differs after {kills} kills");
        }
    }
    // Nothing a killed writer left behind survives the restarts.
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?} in {}", s(&run));
    for d in [straight, run] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
