//! The trainer end to end on tiny models: exact resume, run-directory safety, NaN handling,
//! interruption, cold diffusion, conditioning, branching with --init, and the 2-D toy learning
//! its spiral.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use difflab_data::spiral_distance;
use difflab_pipeline::ExperimentConfig;
use difflab_pipeline::config::{Override, parse_config};
use difflab_train::{TrainError, TrainOptions, train};
use tch::{Device, Tensor};

const TINY: &str = "\
name: tiny
seed: 7
data:
  kind: shapes
  resolution: 8
  channels: 3
  workers: 1
  shapes:
    num_images: 64
schedule:
  timesteps: 100
model:
  kind: unet
  in_channels: 3
  out_channels: 3
  block_out_channels: [8, 16]
  layers_per_block: 1
  attention: [none, full]
  norm_num_groups: 4
training:
  steps: 6
  batch_size: 4
  grad_accum: 2
  optimizer:
    lr: 0.001
  lr_schedule:
    warmup_steps: 2
    schedule: cosine
  ema:
    decay: 0.9
  checkpoint_every: 3
  sample_every: 0
  preview_images: 4
sampler:
  kind: ddim
  steps: 5
logging:
  log_every: 1
  tensorboard: false
";

fn config(text: &str, sets: &[&str]) -> ExperimentConfig {
    let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
    parse_config(text, Path::new("tiny.yaml"), &overrides).expect("valid test config")
}

fn temp_run(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difflab-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(run_dir: &Path) -> TrainOptions {
    TrainOptions {
        run_dir: run_dir.to_path_buf(),
        resume: false,
        overwrite: false,
        init: None,
        device: Device::Cpu,
    }
}

fn go(
    config: &ExperimentConfig,
    options: &TrainOptions,
) -> Result<difflab_train::TrainOutcome, TrainError> {
    train(config, options, &AtomicBool::new(false))
}

/// Every tensor of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t =
        Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn assert_bit_identical(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len(), "{} vs {}", a.display(), b.display());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(
            xa.equal(xb),
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A tiny 2-D toy whose MLP trains through the hand-written backward pass, which overwrites
/// the gradients the previous update left (two micro-batches per step: one overwrites, one
/// adds).
const TOY: &str = "
name: toy-resume
seed: 3
data:
  kind: toy2d
  toy2d:
    num_points: 200
schedule:
  timesteps: 100
model:
  kind: mlp
  hidden: 32
  layers: 2
training:
  steps: 6
  batch_size: 8
  grad_accum: 2
  optimizer:
    lr: 0.001
  ema:
    decay: 0.9
  grad_clip: 0.5
  checkpoint_every: 3
  sample_every: 0
  preview_images: 16
sampler:
  kind: ddpm
  clip_sample: false
logging:
  log_every: 1
  tensorboard: false
";

#[test]
fn resuming_gives_bit_identical_weights_ema_and_optimizer() {
    resume_is_exact(TINY, "unet");
}

/// The taped MLP's run resumes exactly too: its first step after a resume adds to fresh
/// zeros where the straight run overwrote the gradients the last update left.
#[test]
fn resuming_a_taped_mlp_run_is_exact() {
    resume_is_exact(TOY, "mlp");
}

/// A run of `text`'s 6 steps, and the same run stopped after its first step and resumed, end
/// with the same bits in weights, EMA and optimizer state.
fn resume_is_exact(text: &str, tag: &str) {
    let straight = temp_run(&format!("straight-{tag}"));
    let c = config(text, &[]);
    let done = go(&c, &options(&straight)).unwrap();
    assert_eq!(done.step, 6);

    // Same run, stopped at step 1 (a different `steps` only moves the end; the LR schedule is
    // defined over the configured total, so resume with the full config).
    let split = temp_run(&format!("split-{tag}"));
    let stop = AtomicBool::new(true); // interrupted after the first step …
    let first = train(&c, &options(&split), &stop).unwrap();
    assert!(first.interrupted);
    assert_eq!(first.step, 1);
    let resumed = go(
        &c,
        &TrainOptions {
            resume: true,
            ..options(&split)
        },
    )
    .unwrap();
    assert_eq!(resumed.step, 6);
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        assert_bit_identical(&done.checkpoint.join(file), &resumed.checkpoint.join(file));
    }
    for dir in [straight, split] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn an_existing_run_is_never_overwritten_silently() {
    let run = temp_run("exists");
    let c = config(TINY, &["training.steps=2"]);
    let first = go(&c, &options(&run)).unwrap();
    let before = std::fs::read(first.checkpoint.join("model.safetensors")).unwrap();
    let err = go(&c, &options(&run)).unwrap_err();
    assert!(matches!(err, TrainError::RunExists(_)), "{err}");
    assert!(
        err.to_string().contains("--resume")
            && err.to_string().contains(&run.display().to_string())
    );
    assert_eq!(
        std::fs::read(first.checkpoint.join("model.safetensors")).unwrap(),
        before,
        "untouched"
    );
    // --overwrite starts over.
    let again = go(
        &c,
        &TrainOptions {
            overwrite: true,
            ..options(&run)
        },
    )
    .unwrap();
    assert_eq!(again.step, 2);
    std::fs::remove_dir_all(run).unwrap();
}

fn resume(run: &Path) -> TrainOptions {
    TrainOptions {
        resume: true,
        ..options(run)
    }
}

/// `--resume` continues the same experiment: only steps, cadence, logging, device and workers
/// may change; anything else is refused naming each key with its old and new value.
#[test]
fn a_resumed_run_is_the_same_experiment() {
    let run = temp_run("mismatch");
    let first = go(&config(TINY, &["training.steps=2"]), &options(&run)).unwrap();
    for (sets, named) in [
        (
            vec!["model.block_out_channels=[8, 8]"],
            vec!["model.block_out_channels: [8,16] → [8,8]"],
        ),
        (
            vec![
                "objective=v",
                "training.optimizer.lr=0.01",
                "schedule.kind=cosine",
            ],
            vec![
                "objective: \"eps\" → \"v\"",
                "training.optimizer.lr: 0.001 → 0.01",
                "schedule.kind: \"linear\" → \"cosine\"",
            ],
        ),
        (
            vec!["data.shapes.num_images=32"],
            vec!["data.shapes.num_images: 64 → 32"],
        ),
        (vec!["seed=8"], vec!["seed: 7 → 8"]),
    ] {
        let mut all = vec!["training.steps=4"];
        all.extend(&sets);
        let err = go(&config(TINY, &all), &resume(&run)).unwrap_err();
        assert!(matches!(err, TrainError::ResumeMismatch { .. }), "{err}");
        for key in named {
            assert!(err.to_string().contains(key), "{sets:?}: {err}");
        }
        assert!(!err.to_string().contains("training.steps"), "{err}");
    }
    // Below the step reached: refused, naming both.
    let err = go(&config(TINY, &["training.steps=1"]), &resume(&run)).unwrap_err();
    assert!(
        err.to_string()
            .contains("training.steps = 1 is below the step the run has reached (2"),
        "{err}"
    );

    // Resuming the finished run reports the loss it stopped at.
    let again = go(&config(TINY, &["training.steps=2"]), &resume(&run)).unwrap();
    assert_eq!((again.step, again.last_loss), (2, first.last_loss));

    // What may change does, and config.yaml says what actually ran.
    let more = config(
        TINY,
        &[
            "training.steps=4",
            "logging.log_every=2",
            "training.checkpoint_every=1",
            "device=cpu",
        ],
    );
    assert_eq!(go(&more, &resume(&run)).unwrap().step, 4);
    let written = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    let reread = parse_config(&written, Path::new("config.yaml"), &[]).unwrap();
    assert_eq!(
        reread, more,
        "config.yaml is the config that ran:\n{written}"
    );

    // A checkpoint written before the whole config was recorded falls back to the model
    // fingerprint.
    let latest = run.join("checkpoints/step-4/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("config");
    std::fs::write(&latest, state.to_string()).unwrap();
    let other = config(
        TINY,
        &["training.steps=5", "model.block_out_channels=[8, 8]"],
    );
    let err = go(&other, &resume(&run)).unwrap_err();
    assert!(matches!(err, TrainError::ConfigMismatch { .. }), "{err}");

    // A state.json moved into another step's folder is named, not resumed from.
    let moved = run.join("checkpoints/step-9");
    std::fs::rename(run.join("checkpoints/step-4"), &moved).unwrap();
    std::fs::write(run.join("checkpoints/latest"), "step-9\n").unwrap();
    let err = go(&config(TINY, &["training.steps=10"]), &resume(&run)).unwrap_err();
    assert!(
        err.to_string().contains("says step 4") && err.to_string().contains("step-9"),
        "{err}"
    );

    // --resume with nothing to resume is an error too.
    let empty = temp_run("nothing");
    let err = go(&config(TINY, &[]), &resume(&empty)).unwrap_err();
    assert!(err.to_string().contains("checkpoint"), "{err}");
    for dir in [run, empty] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One writer per run folder: while one process holds it, training there fails at once
/// naming the holder; what killed runs left is removed on the next start.
#[test]
fn a_run_folder_has_one_writer_and_leftovers_are_removed() {
    let run = temp_run("lock");
    let c = config(TINY, &["training.steps=2"]);
    go(&c, &options(&run)).unwrap();
    let held = difflab_train::RunDir::new(&run).lock().unwrap();
    let err = go(&c, &resume(&run)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("in use by process") && text.contains(&std::process::id().to_string()),
        "{text}"
    );
    drop(held);

    // Leftovers of a killed run: a half-written checkpoint folder and a config.yaml temporary.
    let half = run.join("checkpoints/step-3.tmp-4242-00ff00ff00ff00ff");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("model.safetensors"), b"half").unwrap();
    let tmp_yaml = run.join("config.yaml.tmp-4242-1234");
    std::fs::write(&tmp_yaml, b"half").unwrap();
    // Not difflab's: kept.
    let theirs = run.join("notes.tmp-keep");
    std::fs::write(&theirs, b"mine").unwrap();
    go(&config(TINY, &["training.steps=3"]), &resume(&run)).unwrap();
    assert!(!half.exists() && !tmp_yaml.exists());
    assert!(theirs.exists());
    std::fs::remove_dir_all(run).unwrap();
}

#[test]
fn missing_or_corrupt_data_fails_before_anything_is_written() {
    let run = temp_run("baddata");
    let folder = run.with_extension("images");
    let c = config(
        TINY,
        &[
            "data.kind=folder",
            &format!("data.path={}", folder.display()),
        ],
    );
    let err = go(&c, &options(&run)).unwrap_err();
    assert!(
        err.to_string().contains(&folder.display().to_string()),
        "{err}"
    );
    assert!(!run.exists(), "nothing written for a missing data folder");

    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("broken.png"), b"not a png at all").unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 30]))
        .save(folder.join("good.png"))
        .unwrap();
    let err = go(&c, &options(&run)).unwrap_err();
    assert!(
        err.to_string().contains("broken.png"),
        "corrupt file named: {err}"
    );
    let skipping = config(
        TINY,
        &[
            "data.kind=folder",
            &format!("data.path={}", folder.display()),
            "data.on_bad_file=skip",
            "training.steps=1",
        ],
    );
    let outcome = go(&skipping, &options(&run.with_extension("skip"))).unwrap();
    assert_eq!(
        (outcome.skipped_files, outcome.skipped_batches),
        (1, 0),
        "the bad file is counted as a file"
    );
    for d in [folder, run.with_extension("skip")] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let run = temp_run("nan");
    let c = config(
        TINY,
        &[
            "training.steps=40",
            "training.checkpoint_every=1",
            "training.optimizer.lr=1e30",
            "training.grad_clip=0",
        ],
    );
    let err = go(&c, &options(&run)).unwrap_err();
    let TrainError::NonFinite { step, .. } = err else {
        panic!("expected NonFinite, got {err}")
    };
    assert!(step >= 1);
    let ckpts = difflab_pipeline::checkpoint::CheckpointDir::new(run.join("checkpoints"));
    if let Some(latest) = ckpts.latest().unwrap() {
        for (name, t) in tensors(&latest.join("model.safetensors")) {
            assert!(
                t.isfinite().all().int64_value(&[]) == 1,
                "{name} is not finite in the kept checkpoint"
            );
        }
    }
    // With on_nan: skip the run finishes and counts the skipped batches.
    let skip = config(
        TINY,
        &[
            "training.steps=6",
            "training.optimizer.lr=1e30",
            "training.grad_clip=0",
            "training.on_nan=skip",
        ],
    );
    let outcome = go(&skip, &options(&run.with_extension("skip"))).unwrap();
    assert!(outcome.skipped_batches >= 1 && outcome.skipped_files == 0);
    for d in [run, run_with("nan", "skip")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A sibling of `temp_run(tag)` (which is left alone), emptied first.
fn run_with(tag: &str, ext: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("difflab-train-{tag}-{}.{ext}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn previews_tensorboard_and_config_are_written() {
    let run = temp_run("artifacts");
    let c = config(
        TINY,
        &[
            "training.steps=2",
            "training.sample_every=2",
            "logging.tensorboard=true",
        ],
    );
    let outcome = go(&c, &options(&run)).unwrap();
    let preview = outcome.preview.expect("a preview grid");
    let img = image::open(&preview).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (2 + 2 * 10, 2 + 2 * 10),
        "4 images of 8 px in a 2x2 grid"
    );
    assert!(std::fs::read_dir(run.join("tensorboard")).unwrap().count() >= 1);
    let saved = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert_eq!(
        parse_config(&saved, Path::new("config.yaml"), &[]).unwrap(),
        c,
        "config.yaml is the resolved config"
    );
    std::fs::remove_dir_all(run).unwrap();
}

#[test]
fn cold_diffusion_and_class_conditional_models_train() {
    let run = temp_run("cold");
    let cold = config(
        TINY,
        &[
            "training.steps=2",
            "training.sample_every=2",
            "process={kind: cold, degradation: {kind: blur, steps: 4, sigma_max: 1.5}}",
            "objective=x0",
            "sampler.kind=cold",
            "sampler.steps=4",
        ],
    );
    let outcome = go(&cold, &options(&run)).unwrap();
    assert!(outcome.preview.is_some() && outcome.last_loss.is_finite());

    let class = config(
        TINY,
        &[
            "training.steps=2",
            "training.sample_every=2",
            "data.label_mode=class",
            "model.num_classes=3",
            "model.null_class=true",
            "training.label_dropout=0.2",
        ],
    );
    let outcome = go(&class, &options(&run.with_extension("class"))).unwrap();
    assert!(outcome.preview.is_some());
    // Label dropout without a null class is a config error, reported before training.
    let bad = config(
        TINY,
        &[
            "data.label_mode=class",
            "model.num_classes=3",
            "training.label_dropout=0.2",
        ],
    );
    let err = go(&bad, &options(&run.with_extension("bad"))).unwrap_err();
    assert!(err.to_string().contains("null_class"), "{err}");
    let err = go(
        &config(TINY, &["data.label_mode=class"]),
        &options(&run.with_extension("bad")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("num_classes"), "{err}");
    for d in [run.clone(), run.with_extension("class")] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn init_branches_from_another_run_and_timestep_range_is_checked() {
    let base = temp_run("base");
    let first = go(&config(TINY, &["training.steps=2"]), &options(&base)).unwrap();
    let expert = run_with("base", "expert");
    let c = config(
        TINY,
        &["training.steps=1", "training.timestep_range=[50, 100]"],
    );
    let outcome = go(
        &c,
        &TrainOptions {
            init: Some(base.join("checkpoints").join("latest")),
            ..options(&expert)
        },
    )
    .unwrap();
    assert_eq!(outcome.step, 1);
    let _ = first;
    let bad = config(TINY, &["training.timestep_range=[50, 200]"]);
    let err = go(&bad, &options(&run_with("base", "bad"))).unwrap_err();
    assert!(err.to_string().contains("timestep_range"), "{err}");
    for d in [base, expert] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn toy2d_learns_the_spiral() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/toy2d.yaml"),
    )
    .unwrap();
    let run = temp_run("toy2d");
    let c = config(
        &text,
        &[
            "training.steps=1500",
            "training.preview_images=500",
            "logging.tensorboard=false",
        ],
    );
    let start = std::time::Instant::now();
    go(&c, &options(&run)).unwrap();
    let elapsed = start.elapsed();
    let csv = std::fs::read_to_string(run.join("samples").join("step-001500.csv")).unwrap();
    let distances: Vec<f32> = csv
        .lines()
        .map(|l| {
            let v: Vec<f32> = l.split(',').map(|x| x.parse().unwrap()).collect();
            spiral_distance([v[0], v[1]])
        })
        .collect();
    let quantiles = |mut d: Vec<f32>| {
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (d[d.len() / 2], d[d.len() * 9 / 10])
    };
    let (median, p90) = quantiles(distances);
    // The same statistics for fresh data and for the N(0, I) starting noise, as the scale.
    let data = difflab_data::sample_toy2d(difflab_data::Toy2dKind::Spiral, 2000, 99);
    let (data_median, data_p90) = quantiles(data.iter().map(|&p| spiral_distance(p)).collect());
    println!(
        "toy2d: 1500 steps in {elapsed:?}; spiral distance median {median:.3} p90 {p90:.3} (data: {data_median:.3} / {data_p90:.3})"
    );
    assert!(
        median < 2.5 * data_median && p90 < 3.0 * data_p90,
        "samples off the spiral: median {median} (data {data_median}), p90 {p90} (data {data_p90})"
    );
    std::fs::remove_dir_all(run).unwrap();
}

#[test]
fn bf16_autocast_trains_and_keeps_fp32_weights() {
    let run = temp_run("bf16");
    let c = config(TINY, &["training.steps=2", "training.precision=bf16"]);
    let outcome = go(&c, &options(&run)).unwrap();
    assert!(outcome.last_loss.is_finite());
    for (name, t) in tensors(&outcome.checkpoint.join("model.safetensors")) {
        assert_eq!(
            t.kind(),
            tch::Kind::Float,
            "{name} stays fp32 (master weights)"
        );
    }
    // The fp32 run gives a different (not bf16-rounded) loss trajectory.
    let fp32 = go(
        &config(TINY, &["training.steps=2", "training.precision=fp32"]),
        &options(&run_with("bf16", "fp32")),
    )
    .unwrap();
    assert_ne!(
        fp32.last_loss, outcome.last_loss,
        "bf16 autocast had no effect"
    );
    for d in [run, run_with("bf16", "fp32")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `training.memory_format` changes the layout, not the run: channels-last and contiguous
/// training draw the same data, noise and timesteps, so the first step's loss agrees up to float
/// rounding, and after six steps so do the weights and the EMA (checkpoints are written
/// contiguous, so they compare directly).
#[test]
fn channels_last_and_contiguous_training_agree_up_to_rounding() {
    let run = |format: &str, steps: u64| {
        let dir = temp_run(&format!("layout-{format}-{steps}"));
        let c = config(
            TINY,
            &[
                &format!("training.memory_format={format}"),
                &format!("training.steps={steps}"),
            ],
        );
        (dir.clone(), go(&c, &options(&dir)).unwrap())
    };
    let (d1, first_contiguous) = run("contiguous", 1);
    let (d2, first_channels_last) = run("channels_last", 1);
    let (a, b) = (first_contiguous.last_loss, first_channels_last.last_loss);
    assert!(
        a.is_finite() && (a - b).abs() <= 1e-5 * a.abs(),
        "first-step loss {a} vs {b}"
    );

    let (d3, contiguous) = run("contiguous", 6);
    let (d4, channels_last) = run("channels_last", 6);
    for file in ["model.safetensors", "ema.safetensors"] {
        let (a, b) = (
            tensors(&contiguous.checkpoint.join(file)),
            tensors(&channels_last.checkpoint.join(file)),
        );
        assert_eq!(a.len(), b.len());
        let mut largest = 0.0f64;
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x.size(), y.size(), "{file}: {name}");
            // The attention key bias has a zero true gradient (softmax ignores a shift shared
            // by all keys): Adam turns its rounding noise into lr-sized steps either way.
            if name.ends_with("to_k.bias") {
                continue;
            }
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{file}: {name} differs by {diff}");
            largest = largest.max(diff);
        }
        // The two layouts really ran different kernels (else this test would prove nothing).
        assert!(
            largest > 0.0,
            "{file}: bit-identical, was channels-last applied?"
        );
    }
    for dir in [d1, d2, d3, d4] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
