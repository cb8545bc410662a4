//! difflab trains exactly as PyTorch does: the golden runs in `tests/golden/training/` (made by
//! `make_goldens.sh`: difflab records a few steps, PyTorch + diffusers replay them) replayed by
//! difflab's own step with every engine and memory format, and fresh models starting at
//! diffusers' first loss.

use std::path::{Path, PathBuf};

use difflab_pipeline::config::{Override, load_config};
use difflab_samplers::Conditioning;
use difflab_train::parity::{CheckOptions, TORCH, check, record};
use difflab_train::{Engine, Learner, StepInputs};
use tch::{Device, Tensor};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/training")
}

fn overrides(items: &[&str]) -> Vec<Override> {
    items.iter().map(|s| s.parse().expect("override")).collect()
}

/// Every golden case, replayed with both engines and (for UNets) both memory formats, is
/// within the default tolerances of PyTorch: losses and norms 1e-5, step-1 gradients 1e-4
/// per tensor, weights and EMA after the last step 2e-3 of the distance they moved; and the
/// initial weights difflab draws from the case's seed are PyTorch's, bit for bit.
#[test]
fn every_golden_case_matches_pytorch() {
    let cases = [
        ("unet_eps", true),
        ("unet_v_clip_warmup_ema", true),
        ("unet_x0_l1_batch1", true),
        ("mlp_eps", false),
        ("mlp_v_minsnr_accum", false),
    ];
    for (case, image) in cases {
        let formats: &[&str] = if image {
            &["channels_last", "contiguous"]
        } else {
            &["auto"]
        };
        for engine in [Engine::Libtorch, Engine::FusedCpu] {
            for format in formats {
                let options = CheckOptions {
                    engine,
                    overrides: overrides(&[&format!("training.memory_format={format}")]),
                    ..CheckOptions::default()
                };
                let report = check(&golden().join(case), &options).expect(case);
                let what = format!("{case}, {engine:?}, {format}:\n{}", report.table());
                assert!(report.passed(), "{what}");
                // The seed's weights: PyTorch's when recorded, and difflab still draws them.
                for init in &report.rows[..2] {
                    assert!(
                        init.quantity.contains("initial weights") && init.worst == 0.0,
                        "{what}"
                    );
                }
                assert_eq!(report.rows.len(), 7, "{what}");
                // Only attention key biases, whose gradient is zero in exact arithmetic.
                assert!(
                    report.null.iter().all(|n| n.ends_with("to_k.bias")),
                    "{what}"
                );
            }
        }
    }
}

/// A wrong recipe does not pass: the same goldens replayed with AdamW's ε, β₂, the weight
/// decay, the warmup, the clipping threshold or Min-SNR's γ changed fail the comparison.
#[test]
fn a_different_recipe_fails_the_comparison() {
    for change in [
        "training.optimizer.eps=1e-7",
        "training.optimizer.betas=[0.9, 0.99]",
        "training.optimizer.weight_decay=0.0",
        "training.lr_schedule.warmup_steps=1",
        "training.grad_clip=0.6",
        "training.min_snr_gamma=4.0",
        "training.ema.power=0.75",
    ] {
        let options = CheckOptions {
            overrides: overrides(&[change]),
            ..CheckOptions::default()
        };
        let report = check(&golden().join("unet_v_clip_warmup_ema"), &options).expect(change);
        assert!(!report.passed(), "{change} passed:\n{}", report.table());
    }
}

/// `check` replays exactly what `record` ran: the recorded run compared with itself has zero
/// error everywhere (so the harness compares PyTorch with the trainer's own step).
#[test]
fn a_recorded_run_replays_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("difflab-parity-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = load_config(&golden().join("cases/mlp_v_minsnr_accum.yaml"), &[]).unwrap();
    record(&config, 3, &dir).unwrap();
    std::fs::rename(dir.join("difflab.safetensors"), dir.join(TORCH)).unwrap();
    let report = check(&dir, &CheckOptions::default()).unwrap();
    for row in &report.rows {
        assert_eq!(row.worst, 0.0, "{}", report.table());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A freshly built model starts where diffusers' UNet2DModel starts: the Fashion-MNIST recipe's
/// UNet under seeds 0–3 has, on one fixed batch, the first loss diffusers' model has under
/// `torch.manual_seed` of the same seed (`make_initial_loss.py`; 0.94–1.24, where tch's default
/// initialisation started at 1.81).
#[test]
fn fresh_models_start_at_diffusers_first_loss() {
    let file = golden().join("initial_loss.safetensors");
    let named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .collect();
    let want = Vec::<f64>::try_from(&named["loss"]).unwrap();
    let recipe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quality/fmnist-recipe.yaml");
    for (seed, want) in want.iter().enumerate() {
        let config = load_config(&recipe, &overrides(&[&format!("seed={seed}")])).unwrap();
        let mut learner = Learner::new(&config, Device::Cpu, Engine::Auto).unwrap();
        let inputs = StepInputs {
            x0: named["x0"].shallow_clone(),
            t: named["t"].shallow_clone(),
            noise: named["noise"].shallow_clone(),
            cond: Conditioning::none(),
        };
        let report = learner.replay(0, &[inputs], &mut |_| {}).unwrap();
        let error = (report.loss - want).abs() / want;
        assert!(
            error < 1e-5,
            "seed {seed}: difflab {} vs diffusers {want}",
            report.loss
        );
    }
}
