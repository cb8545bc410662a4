//! `difflab eval` end to end: a tiny toy2d run is sampled through `difflab sample` and scored
//! against fresh true points; a folder of real Fashion-MNIST images scores near the floor in
//! the shipped reference's feature space; bad requests fail clearly.

#[path = "../../../tests/support/needs.rs"]
mod needs;

mod common;

use common::{difflab, difflab_fails, difflab_ok, stderr, stdout, temp_dir, train, train_args};
use std::path::Path;

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("eval.json")).unwrap()
}

/// The contract the sweep runner reads.
fn check_shape(report: &serde_json::Value, metrics: &[&str]) {
    for key in ["metrics", "floor", "feature_network", "sampler", "source"] {
        assert!(report.get(key).is_some(), "eval.json lacks {key}: {report}");
    }
    assert!(report["num_samples"].as_u64().unwrap() > 0);
    for m in metrics {
        assert!(report["metrics"][m].is_number(), "metrics.{m}: {report}");
        assert!(report["floor"][m].is_number(), "floor.{m}: {report}");
    }
}

#[test]
fn a_tiny_toy_run_is_sampled_and_scored() {
    let run_dir = temp_dir("eval-toy");
    train(
        "configs/toy2d.yaml",
        &run_dir,
        &[
            "training.steps=20",
            "training.preview_images=4",
            "schedule.timesteps=50",
        ],
    );
    // Sampler flags are checked against the run's sampler (ddpm, T = 50) before sampling.
    for (flags, needle) in [
        (
            &["--eta", "0.5"][..],
            "sampler.eta = 0.5 does not apply to kind: ddpm",
        ),
        (&["--sampler", "ddim", "--steps", "100"][..], "steps = 100"),
    ] {
        let mut args = vec!["eval", "--run", run_dir.to_str().unwrap(), "-n", "8"];
        args.extend(flags);
        let run = difflab(&args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{flags:?} should fail");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    let eval = difflab_ok(&[
        "eval",
        "--run",
        run_dir.to_str().unwrap(),
        "--samples",
        "200",
        "--device",
        "cpu",
        "--json",
    ]);
    let printed: serde_json::Value =
        serde_json::from_slice(&eval.stdout).expect("--json prints JSON");
    let out = run_dir.join("eval/ddpm-default-n200-seed0");
    let report = read_json(&out.join("eval.json"));
    assert_eq!(printed, report);
    check_shape(&report, &["mmd_rbf", "energy_distance", "mode_coverage"]);
    assert_eq!(report["num_samples"], 200);
    assert!(out.join("samples/samples.csv").is_file());
    // 20 training steps do not make a spiral: worse than two true samples.
    assert!(
        report["metrics"]["energy_distance"].as_f64().unwrap()
            > report["floor"]["energy_distance"].as_f64().unwrap()
    );
    assert_eq!(report["floor"]["mode_coverage"], 1.0);

    // The same samples as a folder, with the config saying what they are; prints a table.
    let again = difflab_ok(&[
        "eval",
        "--samples",
        out.join("samples").to_str().unwrap(),
        "--config",
        run_dir.join("config.yaml").to_str().unwrap(),
        "--out",
        run_dir.join("again").to_str().unwrap(),
    ]);
    let table = stdout(&again);
    assert!(
        table.contains("mmd_rbf") && table.contains("floor"),
        "{table}"
    );
    let second = read_json(&run_dir.join("again/eval.json"));
    assert_eq!(second["metrics"], report["metrics"]);
    std::fs::remove_dir_all(run_dir).unwrap();
}

#[test]
fn real_images_score_near_the_floor_and_noise_scores_worse() {
    if !needs::fashion_mnist() {
        return;
    }
    // 200 real test images as 32-px PNGs, via the pipeline's own loader and PNG writer.
    use difflab_data::{DataConfig, DataKind, LabelMode, Split, open_dataset};
    let dir = temp_dir("eval-real");
    let noise_dir = temp_dir("eval-noise");
    let data = DataConfig {
        kind: DataKind::FashionMnist,
        resolution: 32,
        channels: 1,
        label_mode: LabelMode::Class,
        split: Split::Test,
        limit: Some(200),
        ..DataConfig::default()
    };
    let ds = open_dataset(&data, 0).unwrap();
    let flat: Vec<f32> = (0..200).flat_map(|i| ds.get(i).unwrap().data).collect();
    let x = tch::Tensor::from_slice(&flat).view([200, 1, 32, 32]);
    difflab_data::images::save_images(&x, &dir, 0).unwrap();
    tch::manual_seed(0);
    let noisy =
        (&x + tch::Tensor::randn([200, 1, 32, 32], tch::kind::FLOAT_CPU) * 0.5).clamp(-1.0, 1.0);
    difflab_data::images::save_images(&noisy, &noise_dir, 0).unwrap();

    let mut reports = Vec::new();
    for d in [&dir, &noise_dir] {
        difflab_ok(&[
            "eval",
            "--samples",
            d.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ]);
        let report = read_json(&d.join("eval.json"));
        check_shape(&report, &["cfid", "kid", "precision", "recall"]);
        assert_eq!(report["feature_network"]["data"], "fashion_mnist");
        reports.push(report);
    }
    let cfid = |r: &serde_json::Value| r["metrics"]["cfid"].as_f64().unwrap();
    let floor = reports[0]["floor"]["cfid"].as_f64().unwrap();
    eprintln!(
        "cFID real {} noisy {} floor {floor}",
        cfid(&reports[0]),
        cfid(&reports[1])
    );
    assert!(cfid(&reports[0]) < 2.0 * floor + 1.0, "{}", reports[0]);
    assert!(
        cfid(&reports[1]) > 2.0 * cfid(&reports[0]),
        "{}",
        reports[1]
    );

    // One class asked for: class_accuracy of real images is the classifier's accuracy there.
    difflab_ok(&[
        "eval",
        "--samples",
        dir.to_str().unwrap(),
        "--class",
        "0",
        "--device",
        "cpu",
        "--json",
    ]);
    let report = read_json(&dir.join("eval.json"));
    assert!(report["metrics"]["class_accuracy"].is_number());
    for d in [dir, noise_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_requests_fail_clearly() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["eval"], "--run DIR"),
        (vec!["eval", "--samples", "/no/such/dir"], "/no/such/dir"),
        (vec!["eval", "--run", "/no/such/run"], "/no/such/run"),
        (
            vec![
                "eval",
                "--samples",
                "/no/such/dir",
                "--sampler",
                "ddpm",
                "--eta",
                "0.5",
            ],
            "sampler.eta = 0.5 does not apply to kind: ddpm",
        ),
    ];
    for (args, needle) in cases {
        difflab_fails(&args, needle);
    }
}

#[test]
fn training_evaluates_its_checkpoints_every_eval_every_steps() {
    let run_dir = temp_dir("eval-every");
    let base = [
        "training.steps=4",
        "training.checkpoint_every=2",
        "data.toy2d.num_points=200",
        "model.hidden=16",
        "training.batch_size=16",
        "logging.eval_samples=64",
    ];
    // Evaluations run on checkpoints: a period that misses them is refused up front.
    let bad = [&base[..], &["logging.eval_every=3"]].concat();
    let run = difflab(&train_args("configs/toy2d.yaml", &run_dir, &bad));
    let err = stderr(&run);
    assert!(!run.status.success());
    assert!(
        err.contains("logging.eval_every = 3") && err.contains("checkpoint_every (2)"),
        "{err}"
    );

    let good = [&base[..], &["logging.eval_every=2"]].concat();
    let err = stderr(&train("configs/toy2d.yaml", &run_dir, &good));
    assert!(
        err.contains("eval at step 2: ") && err.contains("eval at step 4: "),
        "{err}"
    );
    for step in [2, 4] {
        let report = read_json(&run_dir.join(format!("eval/step-{step}/eval.json")));
        check_shape(&report, &["mmd_rbf", "energy_distance", "mode_coverage"]);
    }
    // The metrics reach TensorBoard as eval/<name> scalars.
    let events: Vec<u8> = std::fs::read_dir(run_dir.join("tensorboard"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let tag = b"eval/mmd_rbf";
    let count = events.windows(tag.len()).filter(|w| w == tag).count();
    assert_eq!(count, 2, "one eval/mmd_rbf scalar per evaluated checkpoint");
    std::fs::remove_dir_all(run_dir).unwrap();
}
