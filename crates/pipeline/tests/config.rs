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
    assert_eq!(c.sampler.steps(), Some(10));
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
    assert_eq!(c.sampler.steps(), Some(20));
    assert_eq!(c.objective, Prediction::V);
    // A section absent from the file is created by the override.
    let c = parse(
        &BASE.replace("sampler:\n  kind: ddim\n  steps: 10\n", ""),
        &["sampler.eta=0.5"],
    )
    .unwrap();
    assert_eq!(c.sampler.eta(), Some(0.5));
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

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_sampler_key_that_does_not_apply_names_the_key_value_kind_line_and_column() {
    // `kind` first: the error points at the key's value (line 17, after `kind` and `steps`).
    for (kind, key, value) in [
        ("ddpm", "eta", "0.5"),
        ("ddpm", "set_alpha_to_one", "false"),
        ("ddim", "variance", "fixed_large"),
        ("ddim", "cold_algorithm", "1"),
        ("cold", "spacing", "trailing"),
        ("cold", "eta", "0.0"),
    ] {
        let text = BASE.replace(
            "  kind: ddim\n  steps: 10\n",
            &format!("  kind: {kind}\n  steps: 10\n  {key}: {value}\n"),
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        let want = format!("sampler.{key} = {value} does not apply to kind: {kind}");
        assert!(err.contains(&want), "{kind}/{key}: {err}");
        assert!(err.contains("configs/tiny.yaml"), "{err}");
        assert!(
            err.contains("line 17"),
            "{kind}/{key}: the line of `{key}`: {err}"
        );
    }
    // `kind` after the key: the error points at `kind`.
    let text = BASE.replace("  kind: ddim\n  steps: 10\n", "  eta: 0.5\n  kind: ddpm\n");
    let err = parse(&text, &[]).unwrap_err().to_string();
    assert!(
        err.contains("sampler.eta = 0.5 does not apply to kind: ddpm") && err.contains("line 16"),
        "{err}"
    );
}

#[test]
fn sampler_overrides_are_checked_and_switching_kind_keeps_what_applies() {
    let ddim_eta = "sampler:\n  kind: ddim\n  steps: 10\n  eta: 1.0\n  spacing: trailing\n";
    let base = BASE.replace("sampler:\n  kind: ddim\n  steps: 10\n", ddim_eta);
    // A key that does not apply, from --set: the error names the override and the key.
    let ddpm = BASE.replace("kind: ddim\n  steps", "kind: ddpm\n  steps");
    let err = parse(&ddpm, &["sampler.eta=0.5"]).unwrap_err().to_string();
    assert!(
        err.contains("--set sampler.eta=0.5")
            && err.contains("sampler.eta = 0.5 does not apply to kind: ddpm"),
        "{err}"
    );
    // Switching kind keeps steps and spacing, drops η.
    let c = parse(&base, &["sampler.kind=ddpm"]).unwrap();
    assert_eq!(c.sampler.kind(), difflab_samplers::SamplerKind::Ddpm);
    assert_eq!(c.sampler.steps(), Some(10));
    assert_eq!(
        c.sampler.spacing(),
        Some(difflab_schedulers::TimestepSpacing::Trailing)
    );
    assert_eq!(c.sampler.eta(), None);
    // … whichever order the overrides come in.
    let a = parse(
        &base,
        &["sampler.variance=fixed_large", "sampler.kind=ddpm"],
    )
    .unwrap();
    let b = parse(
        &base,
        &["sampler.kind=ddpm", "sampler.variance=fixed_large"],
    )
    .unwrap();
    assert_eq!(a, b);
    let err = parse(&base, &["sampler.kind=euler"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--set sampler.kind=euler") && err.contains("euler"),
        "{err}"
    );
    // A resolved config round-trips with only its sampler's keys.
    let yaml = to_yaml(&c);
    assert!(
        !yaml.contains("  eta:") && yaml.contains("  variance: fixed_small"),
        "{yaml}"
    );
    assert_eq!(parse(&yaml, &[]).unwrap(), c);
}

#[test]
fn runs_recorded_with_every_sampler_key_still_load() {
    use difflab_pipeline::config::{load_config, load_recorded_config};
    let dir = std::env::temp_dir().join(format!("difflab-recorded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // What earlier versions wrote: every key, whatever the kind.
    let flat = "sampler:\n  kind: ddpm\n  steps: 10\n  eta: 0.0\n  spacing: leading\n  steps_offset: 0\n  set_alpha_to_one: true\n  variance: fixed_large\n  clip_sample: true\n  clip_sample_range: 1.0\n  thresholding: false\n  dynamic_thresholding_ratio: 0.995\n  sample_max_value: 1.0\n  cold_algorithm: \"2\"\n";
    let text = BASE.replace("sampler:\n  kind: ddim\n  steps: 10\n", flat);
    let path = dir.join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let err = load_config(&path, &[]).unwrap_err().to_string();
    assert!(err.contains("sampler.eta = 0.0 does not apply"), "{err}");
    let c = load_recorded_config(&path, &[]).unwrap();
    let expected = parse(
        &BASE.replace(
            "kind: ddim\n  steps: 10\n",
            "kind: ddpm\n  steps: 10\n  variance: fixed_large\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c, expected);
    // Overrides still apply, and other errors are still reported.
    let c = load_recorded_config(&path, &["sampler.steps=20".parse().unwrap()]).unwrap();
    assert_eq!(c.sampler.steps(), Some(20));
    std::fs::write(&path, text.replace("  steps: 10\n", "  stepz: 10\n")).unwrap();
    let err = load_recorded_config(&path, &[]).unwrap_err().to_string();
    assert!(err.contains("stepz"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shipped_experiment_config_and_recorded_golden_run_loads() {
    use difflab_pipeline::config::{load_config, load_recorded_config};
    let mut files = Vec::new();
    let mut dirs = vec![
        repo().join("configs"),
        repo().join("tests/golden/training/cases"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut loaded = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let top: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            serde_saphyr::from_str(&text).unwrap();
        // Sweeps (`base:`) and sampling manifests (`stages:`, `experts:`) are not experiments.
        if ["base", "stages", "experts"]
            .iter()
            .any(|k| top.contains_key(*k))
        {
            continue;
        }
        load_config(path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        loaded += 1;
    }
    assert!(loaded >= 15, "only {loaded} experiment configs found");
    // The parity goldens were recorded with every sampler key.
    let golden = repo().join("tests/golden/training");
    for entry in std::fs::read_dir(&golden).unwrap() {
        let config = entry.unwrap().path().join("config.yaml");
        if config.is_file() {
            load_recorded_config(&config, &[])
                .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        }
    }
}
