//! `difflab schedule` end to end: the binary's JSON against the golden tables, the plot file,
//! and the error messages users see.

#[path = "../../../tests/support/needs.rs"]
mod needs;

mod common;

#[path = "../../../tests/support/golden.rs"]
mod golden;

use common::{difflab, difflab_ok, stderr, stdout};
use golden::{assert_close, f64s, schedulers_json};
use serde_json::Value;
use std::process::{Command, Output};

fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "difflab failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn json_tables_match_the_golden_file_for_every_kind() {
    let g = schedulers_json();
    for entry in g["schedules"].as_array().unwrap() {
        let kind = match entry["beta_schedule"].as_str().unwrap() {
            "squaredcos_cap_v2" => "cosine",
            k => k,
        };
        let (b0, b1) = (
            entry["beta_start"].to_string(),
            entry["beta_end"].to_string(),
        );
        let out = stdout_json(&difflab(&[
            "schedule",
            "--kind",
            kind,
            "--timesteps",
            "1000",
            "--beta-start",
            &b0,
            "--beta-end",
            &b1,
            "--json",
        ]));
        assert_close(
            &format!("{kind} betas"),
            &f64s(&out["betas"]),
            &f64s(&entry["betas"]),
        );
        assert_close(
            &format!("{kind} alphas_cumprod"),
            &f64s(&out["alphas_cumprod"]),
            &f64s(&entry["alphas_cumprod"]),
        );
        assert!(
            out.get("timesteps").is_none(),
            "timesteps only with --inference-steps"
        );
    }
}

#[test]
fn json_timesteps_match_the_golden_ddim_lists() {
    let g = schedulers_json();
    for entry in g["ddim_timesteps"].as_array().unwrap() {
        let n = entry["num_inference_steps"].to_string();
        let offset = entry["steps_offset"].to_string();
        let spacing = entry["timestep_spacing"].as_str().unwrap();
        let out = stdout_json(&difflab(&[
            "schedule",
            "--kind",
            "linear",
            "--json",
            "--inference-steps",
            &n,
            "--spacing",
            spacing,
            "--steps-offset",
            &offset,
        ]));
        assert_eq!(out["timesteps"], entry["timesteps"], "{spacing} {n}");
        assert_eq!(out["betas"].as_array().unwrap().len(), 1000);
    }
}

#[test]
fn zero_terminal_snr_ends_at_zero() {
    let out = stdout_json(&difflab(&[
        "schedule",
        "--kind",
        "scaled_linear",
        "--zero-terminal-snr",
        "--json",
    ]));
    let ab = f64s(&out["alphas_cumprod"]);
    assert_eq!(*ab.last().unwrap(), 0.0);
    assert!(ab[0] > 0.99);
}

#[test]
fn plot_writes_a_png_with_four_panels() {
    let dir = std::env::temp_dir().join(format!("difflab-schedule-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("schedules.png");
    difflab_ok(&[
        "schedule",
        "--kind",
        "linear",
        "--kind",
        "cosine",
        "--plot",
        path.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert!(w >= 800 && h >= 600, "2x2 panels, got {w}x{h}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_reported_with_the_key_and_value() {
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["schedule", "--kind", "quadratic", "--json"],
            2,
            "quadratic",
        ),
        (
            &["schedule", "--kind", "linear", "--beta-end", "2", "--json"],
            1,
            "schedule.beta_end = 2",
        ),
        (&["schedule", "--kind", "linear"], 1, "--json"),
        (
            &["schedule", "--kind", "linear", "--kind", "cosine", "--json"],
            1,
            "single --kind",
        ),
        (
            &[
                "schedule",
                "--kind",
                "linear",
                "--json",
                "--inference-steps",
                "2000",
            ],
            1,
            "steps = 2000",
        ),
        (
            &["--device", "gpu", "schedule", "--kind", "linear", "--json"],
            2,
            "\"gpu\"",
        ),
    ];
    for (args, code, needle) in cases {
        let out = difflab(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {err}"
        );
    }
}

/// `libtorch_cuda` must stay linked (the build script passes `--no-as-needed`): without it
/// `--device auto` never finds a GPU, because nothing references CUDA symbols directly.
#[test]
fn binary_keeps_libtorch_cuda_linked_when_libtorch_has_it() {
    let libtorch = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch/lib");
    // scripts/setup.sh installs PyPI's CUDA build of torch: CI has libtorch_cuda.
    if !needs::available(
        "a CUDA build of libtorch",
        libtorch.join("libtorch_cuda.so").exists(),
    ) {
        return;
    }
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_difflab"))
        .output()
        .expect("ldd");
    let deps = stdout(&out);
    assert!(
        deps.contains("libtorch_cuda.so"),
        "difflab does not link libtorch_cuda:\n{deps}"
    );
    assert!(
        !deps.contains("not found"),
        "unresolved libraries (rpath?):\n{deps}"
    );
}
