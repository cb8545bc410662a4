//! `difflab bench` end to end on a tiny model: it measures what it promises and prints it as
//! JSON (the comparison script reads these keys). Timings are printed, never asserted; the
//! FLOP count is checked against one made from the built network itself.

mod common;

use std::collections::HashMap;

use common::{difflab_ok, fixture, repo};
use difflab_models::{UNet, load_diffusers_unet};
use difflab_pipeline::{ModelConfig, load_config};
use tch::{Device, nn::VarStore};

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

/// Forward FLOPs of one `side`×`side` example counted from the built network, independently of
/// `difflab_models::flops` (which follows the config): every convolution and linear weight
/// of `vs` (2 FLOPs per multiply-accumulate) times the positions it is applied at, read off
/// the network's own per-block trace (`UNet::summary`), plus the two matmuls of each (full)
/// attention layer. Normalisations, biases and embedding lookups are not counted, as there.
fn counted_forward_flops(unet: &UNet, vs: &VarStore, side: i64) -> u64 {
    let summary = unet.summary(side, side).expect("summary");
    // Positions (H·W) at each block's input and output; 1 for the per-example vectors.
    let mut positions: HashMap<String, (i64, i64)> = HashMap::new();
    let mut previous = side * side;
    for row in &summary.rows {
        let shape = &row.output_shape;
        if shape.len() == 4 {
            let out = shape[2] * shape[3];
            positions.insert(row.name.clone(), (previous, out));
            previous = out;
        } else {
            positions.insert(row.name.clone(), (1, 1));
        }
    }
    let mut flops = 0u64;
    for (name, weight) in vs.variables() {
        let size = weight.size();
        if !name.ends_with(".weight") || size.len() < 2 || name.starts_with("class_embedding") {
            continue;
        }
        let parts: Vec<&str> = name.split('.').collect();
        let block = match parts[0] {
            "down_blocks" | "up_blocks" | "context_gains" => format!("{}.{}", parts[0], parts[1]),
            other => other.to_string(),
        };
        let (input, output) = positions[&block];
        let at = if name.contains(".time_emb_proj.") {
            1
        } else if name.contains(".downsamplers.") || name.contains(".upsamplers.") {
            output
        } else {
            input
        };
        flops += 2 * (weight.numel() as u64) * at as u64;
        if name.ends_with(".to_q.weight") {
            // Q Kᵀ and A V over `at` positions, `size[0]` channels over all heads.
            flops += 2 * 2 * (at * at * size[0]) as u64;
        }
    }
    flops
}

fn reported_forward_flops(report: &serde_json::Value) -> f64 {
    report["forward_gflops_per_image"].as_f64().expect("FLOPs") * 1e9
}

fn assert_flops_agree(report: &serde_json::Value, counted: u64) {
    let reported = reported_forward_flops(report);
    assert!(
        (reported - counted as f64).abs() <= 1e-9 * counted as f64,
        "bench reports {reported} forward FLOPs per example, the network's layers count {counted}"
    );
}

#[test]
fn bench_reports_throughput_flops_peak_fraction_and_memory() {
    let config_path = repo().join("configs/cascades/tiny-base.yaml");
    let fixture_dir = fixture("uncond");
    let from_config = bench_json(&["--config", config_path.to_str().unwrap()]);
    let from_diffusers = bench_json(&["--diffusers-model", fixture_dir.to_str().unwrap()]);
    for report in [&from_config, &from_diffusers] {
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

    // The FLOPs per example against the networks' own layers.
    let side = |report: &serde_json::Value| report["resolution"].as_i64().expect("resolution");
    let config = load_config(&config_path, &[]).expect("config");
    let ModelConfig::Unet(unet_config) = &config.model else {
        panic!("tiny-base is a UNet")
    };
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet::new(&vs.root(), unet_config).expect("UNet");
    assert_flops_agree(
        &from_config,
        counted_forward_flops(&unet, &vs, side(&from_config)),
    );
    let (unet, vs, _) = load_diffusers_unet(&fixture_dir, Device::Cpu).expect("load");
    assert_flops_agree(
        &from_diffusers,
        counted_forward_flops(&unet, &vs, side(&from_diffusers)),
    );
}
