//! Config loading: typed YAML with positions in errors, `--set` overrides, validation.

use std::path::Path;

use difflab_pipeline::config::{ConfigError, ModelConfig, Override, parse_config, to_yaml};
use difflab_schedulers::{BetaScheduleKind, Prediction};

const BASE: &str = "\
name: tiny
seed: 3
schedule:
  kind: linear
  timesteps: 100
objective: eps
model:
  kind: unet
  in_channels: 3
  out_channels: 3
  block_out_channels: [8, 16]
  attention: [none, full]
  norm_num_groups: 4
sampler:
  kind: ddim
  steps: 10
";

fn parse(text: &str, sets: &[&str]) -> Result<difflab_pipeline::ExperimentConfig, ConfigError> {
    let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
    parse_config(text, Path::new("configs/tiny.yaml"), &overrides)
}

#[test]
fn parses_every_section_with_defaults() {
    let c = parse(BASE, &[]).unwrap();
    assert_eq!((c.name.as_str(), c.seed), ("tiny", 3));
    assert_eq!(c.schedule.timesteps, 100);
    assert_eq!(c.objective, Prediction::Eps);
    assert_eq!(c.sampler.steps, Some(10));
    let ModelConfig::Unet(unet) = &c.model else {
        panic!("expected a unet, got {:?}", c.model)
    };
    assert_eq!(unet.block_out_channels.as_deref(), Some(&[8, 16][..]));
}

#[test]
fn resolved_yaml_round_trips() {
    let c = parse(BASE, &["schedule.kind=cosine"]).unwrap();
    let again = parse(&to_yaml(&c), &[]).unwrap();
    assert_eq!(again, c);
}

#[test]
fn overrides_take_yaml_typed_values() {
    let c = parse(
        BASE,
        &[
            "schedule.kind=cosine",
            "sampler.steps=20",
            "objective=v",
            "model.attention=[full, linear]",
        ],
    )
    .unwrap();
    assert_eq!(c.schedule.kind, BetaScheduleKind::Cosine);
    assert_eq!(c.sampler.steps, Some(20));
    assert_eq!(c.objective, Prediction::V);
    // A section absent from the file is created by the override.
    let c = parse(
        &BASE.replace("sampler:\n  kind: ddim\n  steps: 10\n", ""),
        &["sampler.eta=0.5"],
    )
    .unwrap();
    assert_eq!(c.sampler.eta, 0.5);
}

#[test]
fn unknown_keys_and_wrong_types_name_the_file_line_and_key() {
    let typo = BASE.replace("  timesteps: 100", "  timestep: 100");
    let err = parse(&typo, &[]).unwrap_err().to_string();
    assert!(err.contains("configs/tiny.yaml"), "{err}");
    assert!(err.contains("timestep"), "{err}");
    assert!(err.contains('5'), "line 5 should be mentioned: {err}");

    let wrong_type = BASE.replace("  steps: 10", "  steps: ten");
    let err = parse(&wrong_type, &[]).unwrap_err().to_string();
    assert!(
        err.contains("configs/tiny.yaml") && err.contains("ten"),
        "{err}"
    );

    let bad_kind = BASE.replace("kind: unet", "kind: transformer");
    let err = parse(&bad_kind, &[]).unwrap_err().to_string();
    assert!(err.contains("transformer"), "{err}");
}

#[test]
fn bad_overrides_name_the_argument() {
    let err = parse(BASE, &["sampler.stepz=20"]).unwrap_err().to_string();
    assert!(
        err.contains("--set sampler.stepz=20") && err.contains("stepz"),
        "{err}"
    );
    let err = parse(BASE, &["seed.x=1"]).unwrap_err().to_string();
    assert!(
        err.contains("--set seed.x=1") && err.contains("not a mapping"),
        "{err}"
    );
    assert!("no-equals-sign".parse::<Override>().is_err());
    assert!("a..b=1".parse::<Override>().is_err());
}

#[test]
fn out_of_range_values_are_rejected_with_the_key() {
    let err = parse(BASE, &["schedule.beta_end=2.0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("schedule.beta_end = 2"), "{err}");
    let err = parse(BASE, &["sampler.steps=500"]).unwrap_err().to_string();
    assert!(err.contains("sampler.steps = 500"), "{err}");
}

#[test]
fn every_model_kind_parses_builds_and_summarises() {
    use difflab_pipeline::Network;
    let mlp = "name: toy\nmodel:\n  kind: mlp\n  data_dim: 2\n  hidden: 32\n  layers: 2\n";
    let sr = "name: sr\nmodel:\n  kind: sr_unet\n  scale_factor: 2\n  unet:\n    in_channels: 3\n    out_channels: 3\n    block_out_channels: [8, 16]\n    norm_num_groups: 4\n";
    for (text, resolution) in [(BASE, 16), (mlp, 0), (sr, 16)] {
        let c = parse(text, &[]).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = Network::build(&vs.root(), &c.model).unwrap();
        let summary = net.summary(resolution).unwrap();
        assert_eq!(summary.total_params, net.num_parameters(), "{}", c.name);
        let stored: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(
            stored,
            net.num_parameters(),
            "{}: every parameter is counted",
            c.name
        );
    }
    let err = parse(&sr.replace("scale_factor: 2", "scale_factor: 0"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale_factor"), "{err}");
    let err = parse(&mlp.replace("hidden: 32", "hiden: 32"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("hiden"), "{err}");
}
