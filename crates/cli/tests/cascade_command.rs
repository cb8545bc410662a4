//! Cascades and expert ensembles end to end on the CPU: train the tiny shapes cascade
//! (16 px base, 16 -> 32 SR), sample it, and branch and sample an ensemble.

mod common;

use common::{difflab_fails, difflab_ok, s, stdout, temp_dir, train};
use std::path::{Path, PathBuf};

/// Image `i` of a sample folder as RGB f64 in [0, 1] with its side length.
fn image(dir: &Path, i: usize) -> (usize, Vec<f64>) {
    let img = image::open(dir.join(format!("{i:06}.png")))
        .expect("png")
        .to_rgb8();
    let side = img.width() as usize;
    (
        side,
        img.into_raw()
            .iter()
            .map(|&v| f64::from(v) / 255.0)
            .collect(),
    )
}

/// 2×2 box average of an RGB `side`² image (area downsampling).
fn half(side: usize, px: &[f64]) -> Vec<f64> {
    let h = side / 2;
    let mut out = vec![0.0; h * h * 3];
    for y in 0..h {
        for x in 0..h {
            for c in 0..3 {
                let at = |yy: usize, xx: usize| px[(yy * side + xx) * 3 + c];
                out[(y * h + x) * 3 + c] = (at(2 * y, 2 * x)
                    + at(2 * y + 1, 2 * x)
                    + at(2 * y, 2 * x + 1)
                    + at(2 * y + 1, 2 * x + 1))
                    / 4.0;
            }
        }
    }
    out
}

fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

#[test]
fn tiny_cascade_trains_samples_and_chains_and_ensembles_route() {
    let dir = temp_dir("cascade");
    let base = dir.join("base");
    let sr = dir.join("sr");
    train(
        "configs/cascades/tiny-base.yaml",
        &base,
        &["training.steps=150"],
    );
    train(
        "configs/cascades/tiny-sr.yaml",
        &sr,
        &["training.steps=150"],
    );

    let manifest = dir.join("cascade.yaml");
    std::fs::write(
        &manifest,
        format!(
            "stages:\n  - name: base\n    run: {}\n  - name: sr\n    run: {}\n    noise_level: 0.1\n",
            base.display(),
            sr.display()
        ),
    )
    .unwrap();

    // base + sr: 32 px images whose low-pass is the base stage's output.
    let out = dir.join("out");
    difflab_ok(&[
        "sample",
        "--config",
        s(&manifest),
        "--cascade",
        "base+sr",
        "-n",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]);
    let base_out = out.join("stages/base");
    let mut matched = 0.0;
    let mut mismatched = 0.0;
    for i in 0..4 {
        let (side, hr) = image(&out, i);
        assert_eq!(side, 32, "SR output is 32 px");
        let (low_side, low) = image(&base_out, i);
        assert_eq!(low_side, 16, "base output is 16 px");
        let (_, other) = image(&base_out, (i + 1) % 4);
        let down = half(side, &hr);
        matched += mae(&down, &low) / 4.0;
        mismatched += mae(&down, &other) / 4.0;
    }
    eprintln!(
        "low-pass of SR vs its base image: MAE {matched:.4}; vs another base image: {mismatched:.4}"
    );
    assert!(
        matched < 0.2 && matched < 0.6 * mismatched,
        "the SR output does not follow its low-resolution input: MAE {matched:.4} (vs {mismatched:.4} for other inputs)"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sample.json")).unwrap()).unwrap();
    let stages = record["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["name"], "base");
    assert_eq!(stages[1]["noise_level"], 0.1);
    assert_eq!(stages[1]["output_shape"], serde_json::json!([3, 32, 32]));
    for st in stages {
        assert_eq!(st["model"]["weights_sha256"].as_str().unwrap().len(), 64);
    }

    // Per-image noise: another batch size gives the same images (stochastic DDPM steps and
    // the SR augmentation noise included), with offloading.
    let rebatched = dir.join("rebatched");
    let run_ddpm = |out: &PathBuf, batch: &str| {
        difflab_ok(&[
            "sample",
            "--config",
            s(&manifest),
            "--sampler",
            "ddpm",
            "--steps",
            "10",
            "-n",
            "3",
            "--batch-size",
            batch,
            "--offload",
            "--device",
            "cpu",
            "--out",
            s(out),
        ]);
    };
    run_ddpm(&rebatched, "3");
    let rebatched2 = dir.join("rebatched2");
    run_ddpm(&rebatched2, "2");
    for i in 0..3 {
        let (_, a) = image(&rebatched, i);
        let (_, b) = image(&rebatched2, i);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1.5 / 255.0,
            "image {i} changed with --batch-size: {worst}"
        );
    }

    // SR alone on given images; trajectory strip.
    let up = dir.join("up");
    difflab_ok(&[
        "sample",
        "--config",
        s(&manifest),
        "--cascade",
        "sr",
        "--cond-image",
        s(&base_out),
        "-n",
        "2",
        "--save-trajectory",
        "--device",
        "cpu",
        "--out",
        s(&up),
    ]);
    assert_eq!(image(&up, 1).0, 32);
    let strip = image::open(up.join("trajectory.png")).unwrap();
    assert!(
        strip.width() > strip.height(),
        "8 frames wide, 4 rows (x_t, x0 for 2 images)"
    );

    // Bad cascades name the stages (each failing job points at a folder nothing has written).
    let unused = dir.join("unused");
    let m = s(&manifest);
    difflab_fails(
        &[
            "sample",
            "--config",
            m,
            "--cascade",
            "sr+base",
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "not a super-resolution stage",
    );
    difflab_fails(
        &[
            "sample",
            "--config",
            m,
            "--cascade",
            "base+up",
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "no stage named \"up\"",
    );
    difflab_fails(
        &[
            "sample",
            "--config",
            m,
            "--cascade",
            "sr",
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "--cond-image",
    );
    difflab_fails(
        &[
            "sample",
            "--config",
            m,
            "--noise-level",
            "0.9",
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "trained with levels in [0, 0.5]",
    );
    difflab_fails(
        &[
            "sample",
            "--config",
            m,
            "--guidance",
            "3",
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "guidance 3 needs a conditional model",
    );
    // A job refused for a later stage's settings wrote nothing, not even the first stage's images.
    let written: Vec<_> = std::fs::read_dir(&unused)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "refused jobs wrote {written:?}");

    // Ensemble whose experts are the same weights == the single model.
    let same = dir.join("same.yaml");
    std::fs::write(
        &same,
        format!(
            "experts:\n  - {{name: low, run: {0}, interval: [0, 500]}}\n  - {{name: high, run: {0}, interval: [500, 1000]}}\n",
            base.display()
        ),
    )
    .unwrap();
    let single = dir.join("single");
    let ens = dir.join("ens");
    // Two images, seed 1, from `--run DIR` or `--config FILE`.
    let sample_two = |source: &str, from: &Path, out: &Path| {
        difflab_ok(&[
            "sample",
            source,
            s(from),
            "-n",
            "2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--out",
            s(out),
        ]);
    };
    sample_two("--run", &base, &single);
    sample_two("--config", &same, &ens);
    for i in 0..2 {
        assert_eq!(image(&single, i).1, image(&ens, i).1, "image {i}");
    }

    // Branch two experts off the base run, fine-tune each on its interval, sample through them.
    let experts = dir.join("experts");
    let split = [
        "ensemble",
        "split",
        "--run",
        s(&base),
        "--at",
        "500",
        "--out",
        s(&experts),
        "--runs",
        s(&dir),
    ];
    let printed = stdout(&difflab_ok(&split));
    assert!(printed.contains("--init"), "{printed}");
    // The same split again changes nothing; a manifest edited since is not overwritten
    // without --overwrite.
    difflab_ok(&split);
    let manifest = experts.join("ensemble.yaml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let edited = format!("{original}# my note\n");
    std::fs::write(&manifest, &edited).unwrap();
    difflab_fails(&split, "--overwrite");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), edited);
    difflab_ok(&[&split[..], &["--overwrite"]].concat());
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), original);
    let init = base.join("checkpoints/latest");
    for (name, range) in [
        ("tiny-base-t0-500", "[0, 500)"),
        ("tiny-base-t500-1000", "[500, 1000)"),
    ] {
        let config = experts.join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(range), "{text}");
        difflab_ok(&[
            "train",
            "--config",
            s(&config),
            "--init",
            s(&init),
            "--out",
            s(&dir.join(name)),
            "--set",
            "training.steps=20",
            "--device",
            "cpu",
        ]);
    }
    let routed = dir.join("routed");
    difflab_ok(&[
        "sample",
        "--config",
        s(&experts.join("ensemble.yaml")),
        "-n",
        "2",
        "--device",
        "cpu",
        "--out",
        s(&routed),
    ]);
    assert_eq!(image(&routed, 1).0, 16);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(routed.join("sample.json")).unwrap()).unwrap();
    let names: Vec<&str> = record["stages"][0]["model"]["experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-base-t0-500", "tiny-base-t500-1000"]);

    // Invalid ensembles name the experts.
    let bad = dir.join("bad.yaml");
    let write_bad = |text: String| std::fs::write(&bad, text).unwrap();
    write_bad(format!(
        "experts:\n  - {{name: a, run: {0}, interval: [0, 600]}}\n  - {{name: b, run: {0}, interval: [500, 1000]}}\n",
        base.display()
    ));
    difflab_fails(
        &[
            "sample",
            "--config",
            s(&bad),
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "experts a and b overlap",
    );
    write_bad(format!(
        "experts:\n  - {{name: a, run: {0}, interval: [0, 500]}}\n  - {{name: b, run: {1}, interval: [500, 1000]}}\n",
        base.display(),
        sr.display()
    ));
    difflab_fails(
        &[
            "sample",
            "--config",
            s(&bad),
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "experts a and b differ in output shape",
    );
    write_bad(format!(
        "experts:\n  - {{name: a, run: {0}, interval: [0, 500]}}\n",
        base.display()
    ));
    difflab_fails(
        &[
            "sample",
            "--config",
            s(&bad),
            "-n",
            "1",
            "--out",
            s(&unused),
        ],
        "no expert covers timesteps [500, 1000)",
    );

    std::fs::remove_dir_all(dir).unwrap();
}
