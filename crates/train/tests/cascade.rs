//! Cascade plumbing without training: SR-stage config checks, resolution chaining, and the
//! full-size anime cascade's two networks each taking one denoising step at 128 and 256 px
//! with their real widths.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use difflab_pipeline::config::{Override, load_config, parse_config};
use difflab_pipeline::{ExperimentConfig, Network};
use difflab_samplers::{Conditioning, Denoiser};
use difflab_sampling::NetworkDenoiser;
use difflab_sampling::cascade::{PlannedStage, StageSpec, check_chain};
use difflab_sampling::{ModelInfo, SamplingError};
use difflab_train::{TrainError, TrainOptions, train};
use tch::{Device, Kind, Tensor, nn};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny(resolution: i64, sets: &[&str]) -> ExperimentConfig {
    let text = format!(
        "name: t\ndata: {{kind: shapes, resolution: {resolution}, shapes: {{num_images: 8}}}}\n\
         model: {{kind: unet, block_out_channels: [8], layers_per_block: 1, norm_num_groups: 4, mid_attention: none}}\n\
         training: {{steps: 2, batch_size: 2, sample_every: 0}}\nlogging: {{tensorboard: false}}\n"
    );
    let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
    parse_config(&text, Path::new("tiny.yaml"), &overrides).expect("valid test config")
}

fn sr(resolution: i64, lowres: i64) -> ExperimentConfig {
    let text = format!(
        "name: t\ndata: {{kind: shapes, resolution: {resolution}, lowres: {lowres}, shapes: {{num_images: 8}}}}\n\
         model: {{kind: sr_unet, unet: {{block_out_channels: [8], layers_per_block: 1, norm_num_groups: 4, mid_attention: none}}}}\n\
         training: {{steps: 2, batch_size: 2, sample_every: 0}}\nlogging: {{tensorboard: false}}\n"
    );
    parse_config(&text, Path::new("sr.yaml"), &[]).expect("valid SR config")
}

fn stage(name: &str, config: &ExperimentConfig) -> PlannedStage {
    let info = ModelInfo::from_config(
        config,
        name.into(),
        PathBuf::from("unused"),
        serde_json::Value::Null,
    )
    .expect("describable");
    PlannedStage::of(name, StageSpec::Single(info))
}

fn chain_error(stages: &[PlannedStage]) -> String {
    match check_chain(stages) {
        Err(SamplingError::Invalid(m)) => m,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn resolutions_must_chain_and_later_stages_must_be_super_resolution() {
    let base = stage("base", &tiny(16, &[]));
    let good = stage("sr", &sr(32, 16));
    let wrong = stage("sr8", &sr(16, 8));
    assert!(check_chain(&[base.clone(), good.clone()]).is_ok());
    assert!(check_chain(&[base.clone(), good.clone(), stage("sr64", &sr(64, 32))]).is_ok());
    let e = chain_error(&[base.clone(), wrong]);
    assert!(
        e.contains("base outputs 3×16×16 but sr8 expects a 3×8×8 input"),
        "{e}"
    );
    let e = chain_error(&[good, base]);
    assert!(
        e.contains("stage base follows stage sr but is not a super-resolution stage"),
        "{e}"
    );
}

#[test]
fn sr_training_configs_are_checked_before_anything_is_written() {
    let dir = std::env::temp_dir().join(format!("difflab-sr-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = TrainOptions {
        run_dir: dir.clone(),
        resume: false,
        overwrite: false,
        init: None,
        device: Device::Cpu,
    };
    let stop = AtomicBool::new(false);
    let err = |config: &ExperimentConfig| match train(config, &options, &stop) {
        Err(TrainError::Config(m)) => m,
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("expected a config error"),
    };
    let mut no_lowres = sr(32, 16);
    no_lowres.data.lowres = None;
    assert!(err(&no_lowres).contains("needs data.lowres"));
    let e = err(&tiny(16, &["data.lowres=8"]));
    assert!(
        e.contains("data.lowres is for super-resolution stages"),
        "{e}"
    );
    let mut factor = sr(32, 16);
    if let difflab_pipeline::ModelConfig::SrUnet(m) = &mut factor.model {
        m.scale_factor = Some(4);
    }
    let e = err(&factor);
    assert!(
        e.contains("model.scale_factor = 4 but data.resolution / data.lowres = 32 / 16 = 2"),
        "{e}"
    );
    assert!(!dir.exists(), "nothing written for a bad config");
    // A valid SR stage trains (2 steps) and writes a checkpoint.
    let outcome = train(&sr(16, 8), &options, &stop).expect("SR stage trains");
    assert_eq!(outcome.step, 2);
    assert!(outcome.last_loss.is_finite());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_lowres_must_divide_the_resolution() {
    let text = "name: t\ndata: {kind: shapes, resolution: 32, lowres: 12}\nmodel: {kind: unet}\n";
    let e = parse_config(text, Path::new("x.yaml"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.lowres: 12 must be smaller than data.resolution (32) and divide it"),
        "{e}"
    );
}

/// One denoising step of each stage of `configs/cascades/anime.yaml` at full size, with the
/// real configured widths (about 30M parameters each), on the CPU.
#[test]
fn the_anime_cascade_stages_take_one_step_at_128_and_256_px() {
    let _guard = tch::no_grad_guard();
    let base = load_config(&repo().join("configs/anime.yaml"), &[]).expect("anime.yaml");
    let sr = load_config(&repo().join("configs/anime-sr.yaml"), &[]).expect("anime-sr.yaml");
    let chain = [stage("base", &base), stage("sr", &sr)];
    check_chain(&chain).expect("base 128 chains into SR 128 -> 256");
    tch::manual_seed(0);
    let f = (Kind::Float, Device::Cpu);

    let vs = nn::VarStore::new(Device::Cpu);
    let net = Network::build(&vs.root(), &base.model).expect("base network");
    assert!(
        net.num_parameters() > 20_000_000,
        "real width: {}",
        net.num_parameters()
    );
    let x = Tensor::randn([1, 3, 128, 128], f);
    let out = NetworkDenoiser::new(&net, base.objective).forward(
        &x,
        &Tensor::from_slice(&[999i64]),
        &Conditioning::none(),
    );
    assert_eq!(out.size(), [1, 3, 128, 128]);
    assert!(out.isfinite().all().int64_value(&[]) == 1);
    drop((net, vs));

    let vs = nn::VarStore::new(Device::Cpu);
    let net = Network::build(&vs.root(), &sr.model).expect("SR network");
    let x = Tensor::randn([1, 3, 256, 256], f);
    let cond = Conditioning {
        image: Some(Tensor::randn([1, 3, 128, 128], f)),
        noise_level: Some(Tensor::from_slice(&[0.2f32])),
        ..Conditioning::none()
    };
    let out =
        NetworkDenoiser::new(&net, sr.objective).forward(&x, &Tensor::from_slice(&[500i64]), &cond);
    assert_eq!(out.size(), [1, 3, 256, 256]);
    assert!(out.isfinite().all().int64_value(&[]) == 1);
}
