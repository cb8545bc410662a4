//! `difflab bench` end to end on a tiny model: it measures what it promises and prints it as
//! JSON (the comparison script reads these keys). Timings are printed, never asserted.

mod common;

use common::{difflab_ok, fixture, repo};

fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--threads", "1", "--device", "cpu", "bench"];
    full.extend(args);
    full.extend([
        "--batch",
        "2",
        "--train-steps",
        "2",
        "--warmup",
        "1",
        "--sample-steps",
        "2",
        "--sample-runs",
        "1",
        "--sgemm-size",
        "64",
        "--json",
    ]);
    let run = difflab_ok(&full);
    serde_json::from_slice(&run.stdout).expect("one JSON object on stdout")
}

#[test]
fn bench_reports_throughput_flops_peak_fraction_and_memory() {
    let config = repo().join("configs/cascades/tiny-base.yaml");
    for report in [
        bench_json(&["--config", config.to_str().unwrap()]),
        bench_json(&["--diffusers-model", fixture("uncond").to_str().unwrap()]),
    ] {
        eprintln!("{report}");
        assert_eq!(report["impl"], "difflab");
        assert_eq!(report["threads"], 1);
        assert!(report["parameters"].as_i64().unwrap() > 0);
        assert!(report["forward_gflops_per_image"].as_f64().unwrap() > 0.0);
        assert!(report["sgemm_gflops"].as_f64().unwrap() > 0.0);
        for figure in ["train", "sample"] {
            assert!(!report[figure].is_null(), "{figure}: {report}");
            let f = report[&format!("{figure}_peak_fraction")].as_f64().unwrap();
            assert!(f > 0.0 && f.is_finite(), "{figure}_peak_fraction = {f}");
        }
        assert!(report["peak_rss_mb"].as_f64().unwrap() > 10.0);
    }
}
