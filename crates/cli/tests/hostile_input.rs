//! The CLI swept with out-of-range, non-finite, absurdly large and malformed values: every one
//! ends with exit code 1 (a checked error) or 2 (a usage error) and a message naming what is
//! wrong, never with a panic (101), an abort (134), a crash (139) or a kill by the OOM killer;
//! and no error repeats the OS's message.

mod common;

use common::{TINY_QUICKSTART, difflab, repo, s, stderr, temp_dir, train};
use std::os::unix::process::ExitStatusExt;

/// Run `args` and check how it ended; returns stderr.
fn refused(args: &[String], needle: &str) -> String {
    let out = difflab(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.signal(),
        None,
        "difflab {args:?} was killed by a signal:\n{err}"
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "difflab {args:?} exited {code:?} (want 1 or 2):\n{err}"
    );
    assert!(
        err.starts_with("error") || err.contains("\nerror"),
        "no error message: {err}"
    );
    assert!(
        err.contains(needle),
        "difflab {args:?}: want {needle:?} in:\n{err}"
    );
    assert!(
        err.matches("(os error").count() <= 1,
        "the OS message is repeated: {err}"
    );
    err
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn out_of_range_values_end_with_a_message_never_a_crash() {
    let dir = temp_dir("hostile");
    let run = dir.join("run");
    let mut sets: Vec<&str> = TINY_QUICKSTART.to_vec();
    sets.extend([
        "training.steps=1",
        "sampler.steps=2",
        "training.preview_images=4",
    ]);
    train("configs/quickstart.yaml", &run, &sets);
    let config = repo().join("configs/quickstart.yaml");

    // Training: each `--set` on top of the tiny quickstart.
    for (i, (set, needle)) in [
        ("training.batch_size=0", "training.batch_size"),
        ("training.batch_size=100000000000", "training.batch_size"),
        ("training.batch_size=1000000", "GiB"),
        ("schedule.timesteps=0", "schedule.timesteps"),
        ("schedule.timesteps=1000000000000", "schedule.timesteps"),
        (
            "training.preview_images=1000000000",
            "training.preview_images",
        ),
        ("data.resolution=0", "data.resolution"),
        ("data.resolution=7", "multiple of 2"),
        ("data.resolution=100000", "data.resolution"),
        ("model.block_out_channels=[]", "block_out_channels"),
        (
            "model.block_out_channels=[8, 1000000000]",
            "block_out_channels",
        ),
        ("model.block_out_channels=[8, 60000]", "GiB"),
        ("model.layers_per_block=100000", "layers_per_block"),
        ("model.norm_num_groups=3", "norm_num_groups"),
        ("training.optimizer.lr=nan", "training.optimizer.lr"),
        ("training.optimizer.lr=-1", "lr"),
        ("training.ema.decay=2", "decay"),
        ("training.grad_accum=3", "grad_accum"),
        ("seed=-1", "seed"),
        ("data.workers=100000", "data.workers"),
        ("data.shapes.num_images=1000000000000", "num_images"),
        ("sampler.steps=100000", "sampler.steps"),
        ("training.timestep_range=[5, 2]", "timestep_range"),
        ("name=../escape", "name"),
        ("data.kind=folder", "data.path"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args =
            common::train_args("configs/quickstart.yaml", &dir.join(format!("t{i}")), &sets);
        args.extend(["--set".into(), set.into()]);
        refused(&args, needle);
        assert!(
            !dir.join(format!("t{i}")).exists(),
            "{set}: nothing written"
        );
    }

    // Sampling the tiny run.
    for (i, (flags, needle)) in [
        (&["-n", "0"][..], "-n"),
        (&["-n", "100000000000"], "GiB"),
        (&["-n", "2", "--batch-size", "0"], "--batch-size"),
        (&["-n", "2", "--steps", "0"], "sampler.steps"),
        (&["-n", "2", "--steps", "1000000000"], "sampler.steps"),
        (&["-n", "2", "--eta", "nan"], "not a finite number"),
        (
            &["-n", "2", "--guidance", "NaN"],
            "NaN is not a finite number",
        ),
        (&["-n", "2", "--guidance", "inf"], "not a finite number"),
        (&["-n", "2", "--eta", "-1"], "-1"),
        (&["-n", "2", "--class", "99999999999"], "class"),
        (&["-n", "2", "--noise-level", "2"], "--noise-level"),
        (&["-n", "2", "--labels", "nan"], "not a finite number"),
        (
            &["-n", "2", "--steps-offset", "100000000000"],
            "steps_offset",
        ),
        (&["-n", "2", "--seed", "x"], "--seed"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.join(format!("s{i}"));
        let mut args = strings(&[
            "sample",
            "--run",
            s(&run),
            "--device",
            "cpu",
            "--out",
            s(&out),
        ]);
        args.extend(strings(flags));
        refused(&args, needle);
        assert!(!out.exists(), "{flags:?}: nothing written");
    }

    // Evaluation, schedules, configs, splits and exports.
    let missing = dir.join("missing");
    for (args, needle) in [
        (vec!["eval", "--run", s(&run), "-n", "0"], "-n"),
        (
            vec![
                "eval",
                "--run",
                s(&run),
                "-n",
                "100000000000",
                "--device",
                "cpu",
            ],
            "GiB",
        ),
        (
            vec!["eval", "--samples", s(&missing), "-n", "3"],
            s(&missing),
        ),
        (
            vec![
                "schedule",
                "--kind",
                "linear",
                "--timesteps",
                "1000000000000",
                "--json",
            ],
            "schedule.timesteps",
        ),
        (
            vec![
                "schedule",
                "--kind",
                "linear",
                "--beta-start",
                "nan",
                "--json",
            ],
            "not a finite number",
        ),
        (
            vec!["config", "check", s(&config), "--set", "data.resolution=7"],
            "data.resolution",
        ),
        (vec!["config", "check", s(&missing)], s(&missing)),
        (
            vec![
                "ensemble",
                "split",
                "--run",
                s(&run),
                "--at",
                "5000000000000",
            ],
            "--at",
        ),
        (vec!["train", "--config", s(&missing)], s(&missing)),
        (vec!["train", "--resume", "--out", s(&missing)], s(&missing)),
        (
            vec![
                "export",
                "--diffusers",
                s(&dir.join("exp")),
                "--config",
                s(&run.join("config.yaml")),
                "--weights",
                s(&missing),
            ],
            s(&missing),
        ),
    ] {
        refused(&strings(&args), needle);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A decompression bomb (a PNG header declaring 2³⁰ pixels) is refused by name before it is
/// decoded.
#[test]
fn an_image_header_declaring_billions_of_pixels_is_refused_before_decoding() {
    let dir = temp_dir("bomb");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // A valid 1×1 PNG, its IHDR rewritten to 32768 × 32768 (CRC fixed up).
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&32768u32.to_be_bytes());
    png[20..24].copy_from_slice(&32768u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(images.join("bomb.png"), &png).unwrap();
    let mut sets: Vec<&str> = TINY_QUICKSTART.to_vec();
    let path = format!("data.path={}", s(&images));
    sets.extend(["training.steps=1", "data.kind=folder", &path]);
    let args = common::train_args("configs/quickstart.yaml", &dir.join("run"), &sets);
    let err = refused(&args, "bomb.png");
    assert!(err.contains("pixels"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// CRC-32 (PNG's, ISO 3309).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
