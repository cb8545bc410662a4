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

const STEPS: u64 = 32;

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

/// The step `checkpoints/latest` names, read without opening the checkpoint (the writer may
/// be replacing it while we look).
fn latest_step(run: &Path) -> Option<u64> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    latest.trim().strip_prefix("step-")?.parse().ok()
}

/// How many restarts are killed before the run is let finish.
const KILLS: usize = 12;

#[test]
fn sigkill_at_random_moments_never_breaks_latest_and_resume_stays_exact() {
    let straight = temp_dir("fault-straight");
    let began = Instant::now();
    difflab_ok(&args(&straight, &[]));
    // The kill moments scale with this machine's speed: a step (with its checkpoint) is the
    // time between the last two checkpoints; start-up is the rest of the run.
    let written = |step: u64| {
        let state = straight.join(format!("checkpoints/step-{step}/state.json"));
        std::fs::metadata(state).unwrap().modified().unwrap()
    };
    let per_step_ms = (written(STEPS).duration_since(written(STEPS - 1)).unwrap())
        .as_millis()
        .max(2) as u64;
    let start_up_ms = (began.elapsed().as_millis() as u64)
        .saturating_sub(STEPS * per_step_ms)
        .max(50);

    let run = temp_dir("fault-killed");
    // xorshift: the same sequence of kill moments on every run of the test.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = Instant::now();
    // Each restart is killed at a moment tied to its progress, so every kill lands before the
    // run ends, whatever the machine's speed: every third one during start-up, the others a
    // random fraction of a step after the restart's first new checkpoint appeared (in the
    // middle of a step or of a checkpoint write).
    for kill in 0..KILLS {
        let mode = match check_latest(&run) {
            Some(_) => "--resume",
            None => "--overwrite",
        };
        let before = latest_step(&run);
        let mut child = Command::new(env!("CARGO_BIN_EXE_difflab"))
            .args(args(&run, &[mode]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let during_start_up = kill % 3 == 0;
        let mut deadline = during_start_up
            .then(|| Instant::now() + Duration::from_millis(next() % (start_up_ms + per_step_ms)));
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(900),
                "restart {kill} made no progress"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("restart {kill} ended ({status}) before it was killed");
            }
            if deadline.is_none() && latest_step(&run) > before {
                deadline = Some(Instant::now() + Duration::from_millis(next() % per_step_ms));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Whatever the moment of the kill, the latest checkpoint is complete.
        let step = check_latest(&run);
        eprintln!("kill {kill} (start-up: {during_start_up}): latest {step:?}");
        assert!(
            step.unwrap_or(0) < STEPS,
            "the run finished within {kill} kills: raise STEPS"
        );
    }
    let kills = KILLS;
    difflab_ok(&args(&run, &["--resume"]));
    assert_eq!(check_latest(&run), Some(STEPS));
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
