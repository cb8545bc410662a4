//! The `sampler:` section: one variant per sampler, keys that do not apply to it rejected by
//! name, old (flat) configs read the same, and changes (overrides) applied through the same keys.

use difflab_samplers::{
    ColdAlgorithm, Conditioning, DdimSampler, DdpmSampler, FnDenoiser, InapplicableKey,
    PerImageNoise, SampleError, Sampler, SamplerConfig, SamplerKeys, SamplerKind, X0Processing,
};
use difflab_schedulers::{
    BetaScheduleKind, NoiseSchedule, Prediction, ScheduleConfig, TimestepSpacing, VarianceType,
};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

fn parse(v: Value) -> Result<SamplerConfig, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn schedule() -> NoiseSchedule {
    ScheduleConfig::new(BetaScheduleKind::Linear, 1000)
        .build()
        .unwrap()
}

/// A value for `key` that differs from its default.
fn non_default(key: &str) -> Value {
    match key {
        "steps" => json!(20),
        "eta" => json!(0.5),
        "spacing" => json!("trailing"),
        "steps_offset" => json!(1),
        "set_alpha_to_one" => json!(false),
        "variance" => json!("fixed_large"),
        "clip_sample" => json!(false),
        "clip_sample_range" => json!(2.0),
        "thresholding" => json!(true),
        "dynamic_thresholding_ratio" => json!(0.9),
        "sample_max_value" => json!(1.5),
        "cold_algorithm" => json!("1"),
        other => panic!("no test value for {other}"),
    }
}

#[test]
fn each_kind_lists_the_keys_its_variant_holds() {
    let mut union: Vec<&str> = vec!["kind"];
    for kind in SamplerKind::ALL {
        let c = SamplerConfig::new(kind)
            .apply(&SamplerKeys {
                steps: Some(10),
                ..SamplerKeys::default()
            })
            .unwrap();
        let Value::Object(map) = serde_json::to_value(&c).unwrap() else {
            panic!("{kind}: not a map")
        };
        let written: Vec<&str> = map.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = std::iter::once("kind")
            .chain(kind.keys().iter().copied())
            .collect();
        expected.sort_unstable();
        let mut sorted = written.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, expected,
            "{kind}: serialised keys vs SamplerKind::keys"
        );
        assert_eq!(map["kind"], json!(kind.name()));
        for k in kind.keys() {
            if !union.contains(k) {
                union.push(k);
            }
        }
    }
    let mut names = SamplerKeys::NAMES.to_vec();
    names.sort_unstable();
    union.sort_unstable();
    assert_eq!(names, union, "every key applies to some sampler");
}

#[test]
fn defaults_are_unchanged() {
    let s = schedule();
    assert_eq!(
        SamplerConfig::default(),
        SamplerConfig::new(SamplerKind::Ddim)
    );
    for kind in SamplerKind::ALL {
        let c = SamplerConfig::new(kind);
        assert_eq!(parse(json!({"kind": kind.name()})), Ok(c.clone()), "{kind}");
        assert_eq!(c.kind(), kind);
        assert_eq!(c.steps(), None);
        assert_eq!(c.x0_processing(), Ok(X0Processing::Clip { range: 1.0 }));
    }
    let ddim = SamplerConfig::default();
    assert_eq!(ddim.eta(), Some(0.0));
    assert_eq!(ddim.spacing(), Some(TimestepSpacing::Leading));
    assert_eq!(ddim.build(&s, None).unwrap().timesteps().len(), 50);
    let SamplerConfig::Ddim(d) = ddim else {
        panic!()
    };
    assert!(d.set_alpha_to_one);
    assert_eq!(d.steps_offset, 0);
    let SamplerConfig::Ddpm(p) = SamplerConfig::new(SamplerKind::Ddpm) else {
        panic!()
    };
    assert_eq!(
        (p.spacing, p.steps_offset, p.variance),
        (TimestepSpacing::Leading, 0, VarianceType::FixedSmall)
    );
    let SamplerConfig::Cold(c) = SamplerConfig::new(SamplerKind::Cold) else {
        panic!()
    };
    assert_eq!(c.cold_algorithm, ColdAlgorithm::Improved);
    let x0 = *SamplerConfig::default().x0();
    assert_eq!(
        (
            x0.clip_sample,
            x0.clip_sample_range,
            x0.thresholding,
            x0.dynamic_thresholding_ratio,
            x0.sample_max_value
        ),
        (true, 1.0, false, 0.995, 1.0)
    );
}

#[test]
fn a_key_that_does_not_apply_is_an_error_naming_it_the_value_and_the_sampler() {
    for kind in SamplerKind::ALL {
        for &key in SamplerKeys::NAMES.iter().skip(1) {
            if kind.takes(key) {
                continue;
            }
            let value = non_default(key);
            let shown = match &value {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            // `kind` first (the key is rejected where it stands) and last (at `kind`).
            let first = json!({"kind": kind.name(), key: value.clone()});
            let text = serde_json::to_string(&first).unwrap();
            let last_text = format!(r#"{{"{key}":{value},"kind":"{kind}"}}"#);
            for text in [text, last_text] {
                let err = serde_json::from_str::<SamplerConfig>(&text)
                    .unwrap_err()
                    .to_string();
                let want = format!("sampler.{key} = {shown} does not apply to kind: {kind}");
                assert!(err.contains(&want), "{text}: {err}");
                // … and the same as a set of changes with a kind.
                let err = serde_json::from_str::<SamplerKeys>(&text)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&want), "{text} as keys: {err}");
            }
        }
    }
    // The examples of the issue, in full.
    let err = parse(json!({"kind": "ddpm", "eta": 0.5})).unwrap_err();
    assert!(
        err.starts_with("sampler.eta = 0.5 does not apply to kind: ddpm; ddpm takes steps, spacing, steps_offset, variance, clip_sample"),
        "{err}"
    );
    let err = parse(json!({"kind": "ddim", "cold_algorithm": "1"})).unwrap_err();
    assert!(
        err.contains("sampler.cold_algorithm = 1 does not apply to kind: ddim"),
        "{err}"
    );
    // Null is a value too: the key is still set for the wrong sampler.
    let err = parse(json!({"kind": "cold", "spacing": null})).unwrap_err();
    assert!(err.contains("sampler.spacing"), "{err}");
    // Without `kind` the section is ddim, and the error says so.
    let err = parse(json!({"variance": "fixed_large"})).unwrap_err();
    assert!(
        err.contains("sampler.variance = fixed_large does not apply to kind: ddim (the default"),
        "{err}"
    );
}

#[test]
fn unknown_and_repeated_keys_and_bad_values_are_errors() {
    let err = parse(json!({"kind": "ddim", "stpes": 10})).unwrap_err();
    assert!(err.contains("stpes") && err.contains("steps"), "{err}");
    let err = parse(json!({"kind": "euler"})).unwrap_err();
    assert!(err.contains("euler"), "{err}");
    let err = parse(json!({"kind": "ddim", "guidance": 3})).unwrap_err();
    assert!(err.contains("guidance"), "{err}");
    let err = serde_json::from_str::<SamplerConfig>(r#"{"kind":"ddim","eta":0.1,"eta":0.2}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate field `eta`"), "{err}");
    let err = parse(json!({"kind": "ddim", "eta": "high"})).unwrap_err();
    assert!(err.contains("high"), "{err}");
    // Only `steps` may be null (its default); other keys need a value, as before.
    assert_eq!(
        parse(json!({"kind": "ddpm", "steps": null})),
        Ok(SamplerConfig::new(SamplerKind::Ddpm))
    );
    assert!(parse(json!({"kind": "ddim", "eta": null})).is_err());
}

#[test]
fn every_valid_flat_config_reads_the_same_and_round_trips() {
    for kind in SamplerKind::ALL {
        // Each key alone, then all of them.
        let mut all = json!({"kind": kind.name()});
        for &key in kind.keys() {
            all[key] = non_default(key);
            let one = json!({"kind": kind.name(), key: non_default(key)});
            let c = parse(one.clone()).unwrap_or_else(|e| panic!("{one}: {e}"));
            let keys = c.keys();
            let set: Vec<(&str, String)> = keys
                .entries()
                .into_iter()
                .filter(|(k, _)| *k == key)
                .collect();
            let shown = match non_default(key) {
                Value::String(s) => s,
                v => v.to_string(),
            };
            assert_eq!(set, [(key, shown)], "{one}");
        }
        let c = parse(all.clone()).unwrap_or_else(|e| panic!("{all}: {e}"));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            all,
            "{kind}: writes what it read"
        );
        assert_eq!(parse(serde_json::to_value(&c).unwrap()), Ok(c.clone()));
        assert_eq!(SamplerConfig::from_keys(&c.keys()), Ok(c));
    }
    // The config accessors.
    let c = parse(json!({"kind": "ddim", "steps": 20, "eta": 0.5, "spacing": "trailing"})).unwrap();
    assert_eq!(
        (c.kind(), c.steps(), c.eta(), c.spacing()),
        (
            SamplerKind::Ddim,
            Some(20),
            Some(0.5),
            Some(TimestepSpacing::Trailing)
        )
    );
    let cold = parse(json!({"kind": "cold", "cold_algorithm": "1"})).unwrap();
    assert_eq!((cold.eta(), cold.spacing()), (None, None));
}

/// What the samplers built from a config draw, against the same samplers built by hand with
/// the values the flat config used to pass.
#[test]
fn configs_build_the_samplers_they_did() {
    let s = schedule();
    let denoiser = FnDenoiser::new(Prediction::Eps, |x: &Tensor, _: &Tensor, _: &_| x * 0.1);
    let run = |sampler: &dyn Sampler| -> Tensor {
        let x = Tensor::ones([2, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
        sampler
            .sample(
                &denoiser,
                x,
                &Conditioning::none(),
                &mut PerImageNoise::new(3, 0, 2),
                &mut |_| {},
            )
            .unwrap()
    };
    let ddim = parse(
        json!({"kind": "ddim", "steps": 8, "eta": 1.0, "spacing": "trailing",
        "set_alpha_to_one": false, "clip_sample_range": 1.5}),
    )
    .unwrap();
    let by_hand = DdimSampler::new(
        &s,
        8,
        TimestepSpacing::Trailing,
        0,
        false,
        1.0,
        X0Processing::Clip { range: 1.5 },
    )
    .unwrap();
    let built = ddim.build(&s, None).unwrap();
    assert_eq!(built.timesteps(), by_hand.timesteps());
    assert!(run(built.as_ref()).equal(&run(&by_hand)));

    let ddpm = parse(json!({"kind": "ddpm", "steps": 10, "steps_offset": 1,
        "variance": "fixed_large", "thresholding": true}))
    .unwrap();
    let by_hand = DdpmSampler::new(
        &s,
        Some(10),
        TimestepSpacing::Leading,
        1,
        VarianceType::FixedLarge,
        X0Processing::DynamicThreshold {
            ratio: 0.995,
            max_value: 1.0,
        },
    )
    .unwrap();
    let built = ddpm.build(&s, None).unwrap();
    assert_eq!(built.timesteps(), by_hand.timesteps());
    assert!(run(built.as_ref()).equal(&run(&by_hand)));
}

#[test]
fn changes_replace_keys_and_switching_kind_keeps_the_keys_that_apply() {
    let ddim = parse(
        json!({"kind": "ddim", "steps": 20, "eta": 0.5, "spacing": "trailing",
        "set_alpha_to_one": false, "clip_sample": false}),
    )
    .unwrap();
    let keys = |v: Value| -> SamplerKeys { serde_json::from_value(v).unwrap() };

    // Same kind: set keys replace, the rest stay.
    let c = ddim.apply(&keys(json!({"steps": 10}))).unwrap();
    assert_eq!((c.steps(), c.eta()), (Some(10), Some(0.5)));
    assert!(!c.x0().clip_sample);

    // Another kind: steps, spacing and the x₀ keys carry over, η and set_alpha_to_one go,
    // ddpm's own keys start at their defaults.
    let c = ddim.apply(&keys(json!({"kind": "ddpm"}))).unwrap();
    assert_eq!(
        c,
        parse(json!({"kind": "ddpm", "steps": 20, "spacing": "trailing", "clip_sample": false}))
            .unwrap()
    );
    assert_eq!(ddim.with_kind(SamplerKind::Ddpm), c);
    let back = c.apply(&keys(json!({"kind": "ddim"}))).unwrap();
    assert_eq!(back.eta(), Some(0.0), "η starts again from its default");
    assert_eq!(back.spacing(), Some(TimestepSpacing::Trailing));
    let cold = ddim.with_kind(SamplerKind::Cold);
    assert_eq!(
        cold,
        parse(json!({"kind": "cold", "steps": 20, "clip_sample": false})).unwrap()
    );

    // A key for the new kind together with the switch.
    let c = SamplerConfig::new(SamplerKind::Ddpm)
        .apply(&keys(json!({"kind": "ddim", "eta": 1.0})))
        .unwrap();
    assert_eq!((c.kind(), c.eta()), (SamplerKind::Ddim, Some(1.0)));

    // A key that does not apply to the resulting sampler fails, naming it.
    let err = SamplerConfig::new(SamplerKind::Ddpm)
        .apply(&SamplerKeys {
            eta: Some(0.5),
            ..SamplerKeys::default()
        })
        .unwrap_err();
    assert_eq!(
        err,
        InapplicableKey {
            key: "eta",
            value: "0.5".into(),
            kind: SamplerKind::Ddpm,
            kind_defaulted: false
        }
    );
    assert!(
        err.to_string()
            .starts_with("sampler.eta = 0.5 does not apply to kind: ddpm")
    );
    let err = ddim
        .apply(&SamplerKeys {
            kind: Some(SamplerKind::Ddpm),
            eta: Some(0.0),
            ..SamplerKeys::default()
        })
        .unwrap_err();
    assert_eq!((err.key, err.kind), ("eta", SamplerKind::Ddpm));
    // As a sampler error (what `build` callers see).
    let e: SampleError = err.into();
    assert!(e.to_string().contains("sampler.eta"), "{e}");

    // Later changes win (command line over manifest), kind included.
    let manifest = keys(json!({"kind": "ddim", "steps": 20, "eta": 1.0}));
    let cli = keys(json!({"steps": 10}));
    let merged = manifest.then(&cli);
    assert_eq!(
        (merged.kind, merged.steps, merged.eta),
        (Some(SamplerKind::Ddim), Some(10), Some(1.0))
    );
    assert!(SamplerKeys::default().is_empty() && !cli.is_empty());
    assert_eq!(
        serde_json::to_value(&merged).unwrap(),
        json!({"kind": "ddim", "steps": 10, "eta": 1.0})
    );
    // A set of changes without a kind is checked when applied, against the config's sampler.
    let eta_only = keys(json!({"eta": 0.5}));
    assert!(ddim.apply(&eta_only).is_ok());
    assert_eq!(eta_only.check(SamplerKind::Cold).unwrap_err().key, "eta");
}
