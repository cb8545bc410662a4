//! `difflab sweep` end to end: shipped sweeps validate, a tiny 2 × 2 sweep writes its results
//! and a rerun does no work, a failing point is recorded while the others finish, unfinished
//! points resume, evaluations follow the `difflab eval` contract (with a stand-in program),
//! and `--dry-run`, `--emit slurm`, `--point` and `--collect` do what they say.

mod common;

use common::{repo, stderr, stdout, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sweep(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_difflab"));
    cmd.args(["--device", "cpu", "--threads", "1", "sweep"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run difflab")
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The tiny settings of configs/sweeps/tiny-toy2d.yaml as a `set:` block.
const TINY_SET: &str = "set:
  data.toy2d.num_points: 200
  schedule.timesteps: 50
  model.hidden: 16
  model.layers: 1
  training.steps: STEPS
  training.batch_size: 16
  training.checkpoint_every: 2
  training.preview_images: 8
  logging.log_every: 2
  logging.tensorboard: false
";

/// A sweep file in `dir` over configs/toy2d.yaml with `body` after the tiny `set:`.
fn write_sweep(dir: &Path, name: &str, steps: u64, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let base = repo().join("configs/toy2d.yaml");
    let file = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nbase: {}\n{}{body}",
        base.display(),
        TINY_SET.replace("STEPS", &steps.to_string())
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn every_shipped_sweep_validates_in_a_dry_run() {
    let out = temp_dir("sweep-shipped");
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("configs/sweeps")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let run = sweep(
                &[
                    path.to_str().unwrap(),
                    "--dry-run",
                    "--out",
                    out.to_str().unwrap(),
                ],
                &[],
            );
            assert!(run.status.success(), "{}: {}", path.display(), text(&run));
            let stdout = stdout(&run);
            assert!(
                stdout.contains("[0] ") && stdout.contains(" train --config "),
                "{stdout}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "schedules-x-objectives, ddim-steps, cold-degradations, tiny-toy2d"
    );
    assert!(!out.exists(), "--dry-run writes nothing");
}

#[test]
fn a_tiny_sweep_writes_its_results_and_a_rerun_does_no_work() {
    let out = temp_dir("sweep-tiny");
    let file = repo().join("configs/sweeps/tiny-toy2d.yaml");
    let args = [
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
    ];
    let first = sweep(&args, &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("4 run, 0 skipped"),
        "{}",
        text(&first)
    );

    let csv = read(out.join("results.csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "point,schedule.kind,objective,sampler,steps,seed,status,final_loss,train_seconds,images_per_sec,error"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    for (line, name) in lines[1..].iter().zip([
        "kind-linear_objective-eps,linear,eps,",
        "kind-linear_objective-v,linear,v,",
        "kind-cosine_objective-eps,cosine,eps,",
        "kind-cosine_objective-v,cosine,v,",
    ]) {
        assert!(line.starts_with(name) && line.contains(",done,"), "{line}");
    }
    let md = read(out.join("results.md"));
    assert!(
        md.contains("| point | `schedule.kind` | `objective` | final_loss |"),
        "{md}"
    );
    assert_eq!(md.matches("| `kind-").count(), 4, "{md}");
    assert!(md.contains("**"), "best values in bold: {md}");
    for png in ["final_loss.png", "train_seconds.png", "images_per_sec.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }
    let plan: serde_json::Value = serde_json::from_str(&read(out.join("sweep.json"))).unwrap();
    assert_eq!(plan["points"].as_array().unwrap().len(), 4);
    let run = out.join("runs/kind-cosine_objective-v");
    assert!(run.join("checkpoints/step-4/model.safetensors").exists());
    let status: serde_json::Value =
        serde_json::from_str(&read(run.join("sweep-status.json"))).unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["step"], 4);
    assert!(status["final_loss"].as_f64().unwrap().is_finite());

    // Rerun: every point is complete, so no process starts and no file of a point changes.
    let snapshot = |name: &str| {
        let dir = out.join("runs").join(name);
        (
            read(dir.join("sweep-status.json")),
            read(dir.join("sweep.log")),
        )
    };
    let names = ["kind-linear_objective-eps", "kind-cosine_objective-v"];
    let before: Vec<_> = names.iter().map(|n| snapshot(n)).collect();
    let second = sweep(&args, &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains("0 run, 4 skipped (complete), 0 failed"),
        "{}",
        text(&second)
    );
    assert!(!text(&second).contains("training ("), "{}", text(&second));
    let after: Vec<_> = names.iter().map(|n| snapshot(n)).collect();
    assert_eq!(before, after);
    assert_eq!(read(out.join("results.csv")), csv, "the same table again");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_failing_point_is_recorded_the_others_finish_and_unfinished_points_resume() {
    let dir = temp_dir("sweep-fail");
    let out = dir.join("out");
    // model.data_dim: 3 passes config validation but not training on 2-D data.
    let body = "points: [{objective: v}, {model.data_dim: 3}]\n";
    let file = write_sweep(&dir, "fail", 2, body);
    let args = [file.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let first = sweep(&args, &[]);
    assert!(!first.status.success(), "a failed point fails the sweep");
    let all = text(&first);
    assert!(
        all.contains("1 run, 0 skipped (complete), 1 failed"),
        "{all}"
    );
    assert!(all.contains("1 of 2 points failed"), "{all}");
    let md = read(out.join("results.md"));
    assert!(md.contains("## Failed points"), "{md}");
    assert!(
        md.contains("- `data_dim-3`: train: error:") && md.contains("model.data_dim = 3"),
        "{md}"
    );
    let csv = read(out.join("results.csv"));
    assert!(csv.contains("objective-v,v,,,,,done,"), "{csv}");
    assert!(csv.contains("data_dim-3,,3,,,,failed,"), "{csv}");
    let status: serde_json::Value =
        serde_json::from_str(&read(out.join("runs/data_dim-3/sweep-status.json"))).unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["phase"], "train");
    assert!(
        status["error"].as_str().unwrap().contains("data_dim"),
        "{status}"
    );

    // More steps in the sweep file: the finished point resumes from its checkpoint, the
    // failed one is retried (and fails again).
    let file = write_sweep(&dir, "fail", 4, body);
    let second = sweep(
        &[file.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    let all = text(&second);
    assert!(!second.status.success());
    assert!(
        all.contains("[0] objective-v: training (resuming at step 2)"),
        "{all}"
    );
    assert!(
        all.contains("1 run, 0 skipped (complete), 1 failed"),
        "{all}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&read(out.join("runs/objective-v/sweep-status.json"))).unwrap();
    assert_eq!(status["step"], 4);
    assert_eq!(status["trained_steps"], 4);
    assert_eq!(status["attempts"], 2);
    let status: serde_json::Value =
        serde_json::from_str(&read(out.join("runs/data_dim-3/sweep-status.json"))).unwrap();
    assert_eq!(status["attempts"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in for `difflab eval`: logs its arguments and writes `<out>/eval.json` with
/// fid = steps / 10 + seed; fails for seed 7.
const FAKE_EVAL: &str = r#"#!/bin/sh
echo "$@" >> "$(dirname "$0")/eval-calls.log"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2;;
    --seed) seed="$2"; shift 2;;
    --steps) steps="$2"; shift 2;;
    *) shift;;
  esac
done
if [ "$seed" = 7 ]; then echo "error: evaluation blew up" >&2; exit 3; fi
mkdir -p "$out"
fid=$(awk "BEGIN { print $steps / 10 + $seed }")
printf '{"metrics": {"fid": %s, "kid": 0.5}, "floor": {"fid": 0.25}}\n' "$fid" > "$out/eval.json"
"#;

#[test]
fn evaluations_follow_the_eval_command_contract() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("sweep-eval");
    let out = dir.join("out");
    let file = write_sweep(
        &dir,
        "eval",
        2,
        "grid: {objective: [eps, v]}\nevaluate:\n  samples: 4\n  seeds: [0, 1]\n  samplers:\n    - {sampler: ddim, steps: [2, 5], eta: 0}\n",
    );
    let fake = dir.join("fake-eval");
    std::fs::write(&fake, FAKE_EVAL).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [("DIFFLAB_SWEEP_EVAL_PROGRAM", fake.as_path())];
    let args = [file.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let first = sweep(&args, &env);
    assert!(first.status.success(), "{}", text(&first));
    let calls = read(dir.join("eval-calls.log"));
    assert_eq!(
        calls.lines().count(),
        8,
        "2 points × 2 steps × 2 seeds: {calls}"
    );
    let run = out.join("runs/objective-v");
    assert!(
        calls.contains(&format!(
            "--threads 1 --device cpu eval --run {} --sampler ddim --steps 5 --eta 0 -n 4 --seed 1 --out {} --json",
            run.display(),
            run.join("eval/ddim-5-eta0-seed1").display()
        )),
        "{calls}"
    );
    let csv = read(out.join("results.csv"));
    assert_eq!(
        csv.lines().next().unwrap(),
        "point,objective,sampler,steps,seed,status,fid,kid,final_loss,floor.fid,error"
    );
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(
        csv.contains("\nobjective-v,v,ddim eta=0,5,1,done,1.5,0.5,"),
        "{csv}"
    );
    let md = read(out.join("results.md"));
    assert!(md.contains("Mean ± std over 2 seeds"), "{md}");
    assert!(
        md.contains("| `objective-eps` | eps | ddim eta=0 | 2 | 2/2 | **0.7000 ± 0.7071** |")
            || md.contains("| `objective-eps` | eps | ddim eta=0 | 2 | 2/2 | **0.7000 ± 0.707"),
        "{md}"
    );
    assert!(md.contains("Real-vs-real floor: fid 0.2500."), "{md}");
    assert!(
        std::fs::read(out.join("fid.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );

    // Rerun: nothing to evaluate again.
    let second = sweep(&args, &env);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(read(dir.join("eval-calls.log")), calls);

    // A failing evaluation fails its point, with the evaluator's error.
    let file = write_sweep(
        &dir,
        "eval",
        2,
        "grid: {objective: [eps, v]}\nevaluate:\n  samples: 4\n  seeds: [0, 7]\n  samplers:\n    - {sampler: ddim, steps: 2, eta: 0}\n",
    );
    let third = sweep(
        &[file.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &env,
    );
    assert!(!third.status.success());
    let md = read(out.join("results.md"));
    assert!(
        md.contains("- `objective-eps`: eval ddim-2-eta0-seed7: error: evaluation blew up"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dry_run_slurm_point_and_collect() {
    let dir = temp_dir("sweep-modes");
    let out = dir.join("out");
    let file = write_sweep(
        &dir,
        "modes",
        2,
        "grid: {schedule.kind: [linear, cosine], objective: [eps, v]}\n",
    );
    let f = file.to_str().unwrap();
    let o = out.to_str().unwrap();

    let dry = sweep(&[f, "--out", o, "--dry-run"], &[]);
    assert!(dry.status.success(), "{}", text(&dry));
    let stdout = stdout(&dry);
    assert!(
        stdout.contains("[3] kind-cosine_objective-v  schedule.kind=cosine objective=v"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            " --threads 1 --device cpu train --config {} --set data.toy2d.num_points=200",
            repo().join("configs/toy2d.yaml").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "--set objective=v --out {}/runs/kind-cosine_objective-v\n",
            o
        )),
        "{stdout}"
    );
    assert!(!out.exists(), "--dry-run writes nothing");

    let slurm = sweep(&[f, "--out", o, "--emit", "slurm"], &[]);
    assert!(slurm.status.success(), "{}", text(&slurm));
    let script = read(out.join("sweep.slurm"));
    assert!(script.contains("#SBATCH --array=0-3\n"), "{script}");
    assert!(
        script.contains("--point \"$SLURM_ARRAY_TASK_ID\""),
        "{script}"
    );
    assert!(!out.join("runs").exists(), "--emit runs nothing");
    assert!(
        out.join("slurm").is_dir(),
        "the log folder Slurm writes to exists at emit time"
    );
    // A control character in a path is refused by name; nothing is written.
    let odd = dir.join("odd\nout");
    let refused = sweep(&[f, "--out", odd.to_str().unwrap(), "--emit", "slurm"], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("output folder") && text(&refused).contains("control character"),
        "{}",
        text(&refused)
    );
    assert!(!odd.exists(), "nothing written");

    let one = sweep(&[f, "--out", o, "--point", "1"], &[]);
    assert!(one.status.success(), "{}", text(&one));
    let runs: Vec<String> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs, ["kind-linear_objective-v"]);
    assert!(
        !out.join("results.md").exists(),
        "--point leaves the tables to --collect"
    );

    let collect = sweep(&[f, "--out", o, "--collect"], &[]);
    assert!(collect.status.success(), "{}", text(&collect));
    let md = read(out.join("results.md"));
    assert!(md.contains("## Unfinished points"), "{md}");
    assert_eq!(
        read(out.join("results.csv")).matches(",pending,").count(),
        3
    );

    let bad = sweep(&[f, "--out", o, "--point", "4"], &[]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("--point 4: the sweep has 4 points"),
        "{}",
        text(&bad)
    );

    // A bad key fails the whole sweep before anything runs, naming the point and the key.
    let bad_file = write_sweep(
        &dir,
        "bad",
        2,
        "grid: {objective: [eps, v]}\npoints: [{schedule.kindd: cosine}]\n",
    );
    let bad_out = dir.join("bad-out");
    let bad = sweep(
        &[
            bad_file.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!bad.status.success());
    let all = text(&bad);
    assert!(
        all.contains("point 2 (kindd-cosine)") && all.contains("kindd"),
        "{all}"
    );
    assert!(!bad_out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_evaluates_its_points_with_the_real_eval_command() {
    let dir = temp_dir("sweep-real-eval");
    let file = write_sweep(
        &dir,
        "real-eval",
        4,
        "grid:\n  objective: [eps, v]\nevaluate:\n  samples: 32\n  seeds: [0]\n  samplers:\n    - {sampler: ddpm, steps: 10}\n",
    );
    let out = dir.join("out");
    let run = sweep(
        &[file.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run));
    let csv = read(out.join("results.csv"));
    let header = csv.lines().next().unwrap();
    for metric in ["mmd_rbf", "energy_distance", "mode_coverage"] {
        assert!(header.contains(metric), "{header}");
        assert!(out.join(format!("{metric}.png")).exists(), "{metric}.png");
    }
    assert_eq!(csv.lines().count(), 3, "a row per point:\n{csv}");
    let md = read(out.join("results.md"));
    assert!(md.contains("Real-vs-real floor"), "{md}");
    std::fs::remove_dir_all(dir).unwrap();
}
