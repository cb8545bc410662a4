//! Behavioural tests of the samplers: finiteness over every schedule/prediction/spacing/x₀
//! processing combination, reproducibility and batch-size invariance of the noise, the step
//! callback, classifier-free guidance, the sampler config, x₀ processing and cold-diffusion
//! inversion with an oracle.

use std::cell::{Cell, RefCell};

use difflab_samplers::{
    ClassifierFreeGuidance, ColdAlgorithm, ColdSampler, Conditioning, DdimSampler, DdpmSampler,
    Denoiser, FnDenoiser, GlobalSeedNoise, NoiseSource, PerImageNoise, SampleError, Sampler,
    SamplerConfig, SamplerKeys, SamplerKind, X0Processing,
};
use difflab_schedulers::{
    BetaScheduleKind, Degradation, DegradationConfig, NoiseSchedule, Prediction, ScheduleConfig,
    ScheduleError, TimestepSpacing, VarianceType,
};
use tch::{Device, Kind, Tensor};

const SHAPE: [i64; 4] = [4, 3, 8, 8];
const PREDICTIONS: [Prediction; 3] = [Prediction::Eps, Prediction::X0, Prediction::V];
const SPACINGS: [TimestepSpacing; 3] = [
    TimestepSpacing::Leading,
    TimestepSpacing::Trailing,
    TimestepSpacing::Linspace,
];
const X0_PROCESSINGS: [X0Processing; 3] = [
    X0Processing::None,
    X0Processing::Clip { range: 1.0 },
    X0Processing::DynamicThreshold {
        ratio: 0.995,
        max_value: 1.0,
    },
];

#[path = "../../../tests/support/lcg.rs"]
mod lcg;
use lcg::Lcg;

/// Standard-normal f32 noise of `shape`, reproducible per seed (per-image streams).
fn randn(seed: u64, shape: &[i64]) -> Tensor {
    PerImageNoise::new(seed, 0, shape[0] as usize).draw(shape, Kind::Float, Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn all_finite(x: &Tensor) -> bool {
    x.isfinite().all().int64_value(&[]) != 0
}

/// `t` as a float `[B, 1, 1, 1]` tensor.
fn t_column(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float).reshape([-1, 1, 1, 1])
}

/// An arbitrary bounded "network": out = 0.9·tanh(x) + 0.1·sin(t/100).
fn bounded(prediction: Prediction) -> impl Denoiser {
    FnDenoiser::new(prediction, |x: &Tensor, t: &Tensor, _: &Conditioning| {
        x.tanh() * 0.9 + (t_column(t) / 100.0).sin() * 0.1
    })
}

fn schedule(kind: BetaScheduleKind, t: usize, zero_terminal_snr: bool) -> NoiseSchedule {
    let mut cfg = ScheduleConfig::new(kind, t);
    cfg.zero_terminal_snr = zero_terminal_snr;
    cfg.build().unwrap()
}

fn no_callback() -> impl FnMut(&difflab_samplers::StepInfo<'_>) {
    |_| {}
}

fn key_of(e: SampleError) -> &'static str {
    match e {
        SampleError::Config(ScheduleError::Invalid { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn build_err(cfg: &SamplerConfig, s: &NoiseSchedule) -> SampleError {
    match cfg.build(s, None) {
        Ok(_) => panic!("{cfg:?} built"),
        Err(e) => e,
    }
}

/// DDIM (η 0 and 1) and strided DDPM (both variances), 10 steps each, over the whole grid of
/// zero-terminal-SNR × prediction × spacing × x₀ processing for one beta schedule kind.
fn assert_finite_for_kind(kind: BetaScheduleKind) {
    let x_t = randn(11, &SHAPE);
    for ztsnr in [false, true] {
        let s = schedule(kind, 1000, ztsnr);
        for prediction in PREDICTIONS {
            let denoiser = bounded(prediction);
            for spacing in SPACINGS {
                for x0p in X0_PROCESSINGS {
                    let samplers: [Box<dyn Sampler>; 4] = [
                        Box::new(DdimSampler::new(&s, 10, spacing, 0, true, 0.0, x0p).unwrap()),
                        Box::new(DdimSampler::new(&s, 10, spacing, 0, false, 1.0, x0p).unwrap()),
                        Box::new(
                            DdpmSampler::new(
                                &s,
                                Some(10),
                                spacing,
                                0,
                                VarianceType::FixedSmall,
                                x0p,
                            )
                            .unwrap(),
                        ),
                        Box::new(
                            DdpmSampler::new(
                                &s,
                                Some(10),
                                spacing,
                                0,
                                VarianceType::FixedLarge,
                                x0p,
                            )
                            .unwrap(),
                        ),
                    ];
                    for (which, sampler) in samplers.iter().enumerate() {
                        let what = format!(
                            "{kind:?} ztsnr={ztsnr} {prediction:?} {spacing:?} {x0p:?} sampler #{which} ({})",
                            sampler.name()
                        );
                        let mut noise = PerImageNoise::new(5, 0, SHAPE[0] as usize);
                        let mut bad_steps = Vec::new();
                        let out = sampler.sample(
                            &denoiser,
                            x_t.copy(),
                            &Conditioning::none(),
                            &mut noise,
                            &mut |info| {
                                if !all_finite(info.x) || !all_finite(info.pred_x0) {
                                    bad_steps.push(info.t);
                                }
                            },
                        );
                        let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(all_finite(&out), "{what}: non-finite result");
                        assert_eq!(out.size(), SHAPE, "{what}");
                        assert!(
                            bad_steps.is_empty(),
                            "{what}: non-finite at t = {bad_steps:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn finite_for_every_combination_linear() {
    assert_finite_for_kind(BetaScheduleKind::Linear);
}

#[test]
fn finite_for_every_combination_scaled_linear() {
    assert_finite_for_kind(BetaScheduleKind::ScaledLinear);
}

#[test]
fn finite_for_every_combination_cosine() {
    assert_finite_for_kind(BetaScheduleKind::Cosine);
}

#[test]
fn finite_for_every_combination_sigmoid() {
    assert_finite_for_kind(BetaScheduleKind::Sigmoid);
}

fn ddpm_strided(steps: usize) -> DdpmSampler {
    let s = schedule(BetaScheduleKind::Linear, 1000, false);
    DdpmSampler::new(
        &s,
        Some(steps),
        TimestepSpacing::Leading,
        0,
        VarianceType::FixedSmall,
        X0Processing::Clip { range: 1.0 },
    )
    .unwrap()
}

/// x_T drawn from `noise`, then DDPM driven by the same source.
fn run_from(sampler: &dyn Sampler, noise: &mut dyn NoiseSource, shape: &[i64]) -> Tensor {
    let x_t = noise.draw(shape, Kind::Float, Device::Cpu);
    sampler
        .sample(
            &bounded(Prediction::Eps),
            x_t,
            &Conditioning::none(),
            noise,
            &mut no_callback(),
        )
        .unwrap()
}

#[test]
fn same_seed_same_samples_different_seed_different_samples() {
    let sampler = ddpm_strided(10);
    let n = SHAPE[0] as usize;
    let per_image = |seed| run_from(&sampler, &mut PerImageNoise::new(seed, 0, n), &SHAPE);
    let (a, b, c) = (per_image(1), per_image(1), per_image(2));
    assert!(a.equal(&b), "PerImageNoise: same seed differs");
    assert!(
        max_abs_diff(&a, &c) > 1e-3,
        "PerImageNoise: seeds 1 and 2 agree"
    );

    let global = |seed| run_from(&sampler, &mut GlobalSeedNoise::new(seed), &SHAPE);
    let (a, b, c) = (global(1), global(1), global(2));
    assert!(a.equal(&b), "GlobalSeedNoise: same seed differs");
    assert!(
        max_abs_diff(&a, &c) > 1e-3,
        "GlobalSeedNoise: seeds 1 and 2 agree"
    );

    // Images within one batch get different noise.
    let a = per_image(3);
    assert!(max_abs_diff(&a.get(0), &a.get(1)) > 1e-3);
}

#[test]
fn per_image_noise_makes_samples_independent_of_batch_size() {
    let sampler = ddpm_strided(20);
    let whole = run_from(&sampler, &mut PerImageNoise::new(42, 0, 4), &SHAPE);
    let half = [2, SHAPE[1], SHAPE[2], SHAPE[3]];
    let first = run_from(&sampler, &mut PerImageNoise::new(42, 0, 2), &half);
    let second = run_from(&sampler, &mut PerImageNoise::new(42, 2, 2), &half);
    let split = Tensor::cat(&[first, second], 0);
    assert!(
        whole.equal(&split),
        "4 vs 2+2: max diff {}",
        max_abs_diff(&whole, &split)
    );
    // The same holds image by image.
    let third = run_from(
        &sampler,
        &mut PerImageNoise::new(42, 3, 1),
        &[1, SHAPE[1], SHAPE[2], SHAPE[3]],
    );
    assert!(whole.get(3).equal(&third.get(0)));
}

#[test]
fn step_callback_reports_every_step() {
    let s = schedule(BetaScheduleKind::Linear, 1000, false);
    let fade: DegradationConfig = serde_json::from_str(r#"{"kind":"fade","steps":12}"#).unwrap();
    let samplers: Vec<(Box<dyn Sampler>, Prediction)> = vec![
        (
            Box::new(
                DdimSampler::new(
                    &s,
                    7,
                    TimestepSpacing::Trailing,
                    0,
                    true,
                    0.5,
                    X0Processing::None,
                )
                .unwrap(),
            ),
            Prediction::Eps,
        ),
        (Box::new(ddpm_strided(9)), Prediction::V),
        (
            Box::new(
                ColdSampler::new(
                    fade.build(&s, Device::Cpu).unwrap(),
                    Some(5),
                    ColdAlgorithm::Improved,
                    X0Processing::None,
                )
                .unwrap(),
            ),
            Prediction::X0,
        ),
    ];
    for (sampler, prediction) in samplers {
        let ts = sampler.timesteps().to_vec();
        let n = ts.len();
        let mut seen = Vec::new();
        let x_t = randn(3, &SHAPE);
        let out = sampler
            .sample(
                &bounded(prediction),
                x_t,
                &Conditioning::none(),
                &mut PerImageNoise::new(1, 0, 4),
                &mut |info| {
                    seen.push((
                        info.index,
                        info.total,
                        info.t,
                        info.x.size(),
                        all_finite(info.pred_x0),
                        info.pred_x0.size(),
                        info.x.copy(),
                    ))
                },
            )
            .unwrap();
        let name = sampler.name();
        assert_eq!(seen.len(), n, "{name}: callback count");
        for (i, (index, total, t, shape, finite, x0_shape, _)) in seen.iter().enumerate() {
            assert_eq!(*index, i, "{name}");
            assert_eq!(*total, n, "{name}");
            assert_eq!(*t, ts[i], "{name}: step {i}");
            assert_eq!(shape, &SHAPE, "{name}: step {i}");
            assert_eq!(x0_shape, &SHAPE, "{name}: step {i}");
            assert!(finite, "{name}: step {i} pred_x0 not finite");
        }
        // The last reported x is the returned sample.
        assert!(seen.last().unwrap().6.equal(&out), "{name}: last x");
    }
}

/// A denoiser whose output is the class label, broadcast over x's shape; it counts its calls
/// and records the batch sizes and labels it was given.
struct LabelEcho {
    calls: Cell<usize>,
    batches: RefCell<Vec<i64>>,
    labels: RefCell<Vec<Vec<i64>>>,
}

impl LabelEcho {
    fn new() -> Self {
        Self {
            calls: Cell::new(0),
            batches: RefCell::new(Vec::new()),
            labels: RefCell::new(Vec::new()),
        }
    }
    fn reset(&self) {
        self.calls.set(0);
        self.batches.borrow_mut().clear();
        self.labels.borrow_mut().clear();
    }
}

impl Denoiser for LabelEcho {
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        self.batches.borrow_mut().push(x_t.size()[0]);
        assert_eq!(t.size(), [x_t.size()[0]], "t batched like x");
        let labels = cond.class_labels.as_ref().expect("class labels");
        self.labels
            .borrow_mut()
            .push(Vec::<i64>::try_from(labels).unwrap());
        x_t * 0.0 + t_column(labels)
    }
}

#[test]
fn classifier_free_guidance_combines_conditional_and_unconditional() {
    let inner = LabelEcho::new();
    let labels = [0i64, 3, 7];
    let cond = Conditioning::classes(Tensor::from_slice(&labels));
    let x = randn(4, &[3, 2, 4, 4]);
    let t = Tensor::from_slice(&[5i64, 5, 5]);
    let label_value = |l: f64| x.zeros_like() + l;
    for scale in [1.0, 0.0, 3.0, -0.5, 7.5] {
        inner.reset();
        let guided = ClassifierFreeGuidance::new(&inner, scale, 10);
        assert_eq!(guided.scale(), scale);
        assert_eq!(guided.prediction(), Prediction::Eps);
        let out = guided.forward(&x, &t, &cond);
        assert_eq!(out.size(), x.size());
        for (i, &c) in labels.iter().enumerate() {
            let want = 10.0 + scale * (c as f64 - 10.0);
            let got = out.get(i as i64);
            assert!(
                max_abs_diff(&got, &label_value(want).get(i as i64)) < 1e-5,
                "scale {scale}, sample {i}: want {want}"
            );
        }
        assert_eq!(inner.calls.get(), 1, "scale {scale}: one inner call");
        let (batches, seen) = (inner.batches.borrow(), inner.labels.borrow());
        match scale {
            1.0 => {
                assert_eq!(*batches, [3]);
                assert_eq!(seen[0], labels);
            }
            0.0 => {
                assert_eq!(*batches, [3]);
                assert_eq!(seen[0], [10, 10, 10]);
            }
            _ => {
                assert_eq!(*batches, [6], "scale {scale}: batch 2B");
                assert_eq!(seen[0], [0, 3, 7, 10, 10, 10]);
            }
        }
    }
}

#[test]
fn classifier_free_guidance_inside_ddim() {
    let s = schedule(BetaScheduleKind::Linear, 1000, false);
    let sampler = DdimSampler::new(
        &s,
        10,
        TimestepSpacing::Leading,
        0,
        true,
        0.0,
        X0Processing::Clip { range: 1.0 },
    )
    .unwrap();
    let calls = Cell::new(0usize);
    let inner = FnDenoiser::new(
        Prediction::Eps,
        |x: &Tensor, _: &Tensor, cond: &Conditioning| {
            calls.set(calls.get() + 1);
            let l = t_column(cond.class_labels.as_ref().unwrap());
            x.tanh() * 0.5 + l * 0.05
        },
    );
    let cond = Conditioning::classes(Tensor::from_slice(&[1i64, 2, 3, 4]));
    let x_t = randn(9, &SHAPE);
    let run = |d: &dyn Denoiser| {
        sampler
            .sample(
                d,
                x_t.copy(),
                &cond,
                &mut PerImageNoise::new(0, 0, 4),
                &mut no_callback(),
            )
            .unwrap()
    };
    let plain = run(&inner);
    calls.set(0);
    let guided = run(&ClassifierFreeGuidance::new(&inner, 3.0, 10));
    assert_eq!(calls.get(), 10, "one batched call per step");
    assert!(all_finite(&guided));
    assert!(
        max_abs_diff(&plain, &guided) > 1e-3,
        "guidance changed nothing"
    );
    let scale_one = run(&ClassifierFreeGuidance::new(&inner, 1.0, 10));
    assert!(scale_one.equal(&plain), "scale 1 is the conditional model");
}

#[test]
fn unconditional_conditioning_zeroes_labels_and_keeps_the_image() {
    let cond = Conditioning {
        class_labels: Some(Tensor::from_slice(&[1i64, 2])),
        label_vector: Some(Tensor::ones([2, 5], (Kind::Float, Device::Cpu))),
        image: Some(randn(2, &[2, 1, 4, 4])),
        context: Some(Tensor::ones([2, 8], (Kind::Float, Device::Cpu)) * 3.0),
        noise_level: Some(Tensor::from_slice(&[0.1f32, 0.2])),
    };
    let u = cond.unconditional(10);
    assert_eq!(
        Vec::<i64>::try_from(u.class_labels.as_ref().unwrap()).unwrap(),
        [10, 10]
    );
    let lv = u.label_vector.as_ref().unwrap();
    assert_eq!(lv.size(), [2, 5]);
    assert_eq!(lv.abs().sum(Kind::Double).double_value(&[]), 0.0);
    let ctx = u.context.as_ref().unwrap();
    assert_eq!(ctx.size(), [2, 8]);
    assert_eq!(ctx.abs().sum(Kind::Double).double_value(&[]), 0.0);
    assert!(
        u.image
            .as_ref()
            .unwrap()
            .equal(cond.image.as_ref().unwrap())
    );
    assert!(
        u.noise_level
            .as_ref()
            .unwrap()
            .equal(cond.noise_level.as_ref().unwrap()),
        "an SR stage's augmentation level is kept"
    );
    // Selecting samples keeps every field, in the given order.
    let picked = cond.index_select(&Tensor::from_slice(&[1i64]));
    assert_eq!(
        Vec::<i64>::try_from(picked.class_labels.unwrap()).unwrap(),
        [2]
    );
    assert_eq!(
        Vec::<f32>::try_from(picked.noise_level.unwrap()).unwrap(),
        [0.2]
    );
    assert_eq!(picked.image.unwrap().size(), [1, 1, 4, 4]);
    // The original is untouched.
    assert_eq!(
        cond.label_vector
            .as_ref()
            .unwrap()
            .sum(Kind::Double)
            .double_value(&[]),
        10.0
    );
    // Both halves along the batch, conditional first.
    let both = cond.cat(&u);
    assert_eq!(
        Vec::<i64>::try_from(both.class_labels.as_ref().unwrap()).unwrap(),
        [1, 2, 10, 10]
    );
    assert_eq!(both.image.as_ref().unwrap().size(), [4, 1, 4, 4]);
    assert!(Conditioning::none().unconditional(10).is_empty());
}

#[test]
fn sampler_config_defaults_validation_and_build() {
    let s = schedule(BetaScheduleKind::Linear, 1000, false);

    let cfg: SamplerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, SamplerConfig::default());
    assert_eq!(cfg.kind(), SamplerKind::Ddim);
    assert!(cfg.x0().clip_sample);
    assert_eq!(cfg.steps(), None);
    assert_eq!(cfg.eta(), Some(0.0));
    let SamplerConfig::Ddim(ddim) = &cfg else {
        panic!("expected ddim, got {cfg:?}")
    };
    assert!(ddim.set_alpha_to_one);
    assert_eq!(cfg.x0_processing(), Ok(X0Processing::Clip { range: 1.0 }));
    let sampler = cfg.build(&s, None).unwrap();
    assert_eq!(sampler.name(), "ddim");
    assert_eq!(sampler.timesteps().len(), 50, "DDIM default steps");
    let short = schedule(BetaScheduleKind::Linear, 30, false);
    assert_eq!(cfg.build(&short, None).unwrap().timesteps().len(), 30);

    let ddpm: SamplerConfig =
        serde_json::from_str(r#"{"kind":"ddpm","variance":"fixed_large"}"#).unwrap();
    let SamplerConfig::Ddpm(d) = &ddpm else {
        panic!("expected ddpm, got {ddpm:?}")
    };
    assert_eq!(d.variance, VarianceType::FixedLarge);
    let built = ddpm.build(&s, None).unwrap();
    assert_eq!(built.name(), "ddpm");
    assert_eq!(built.timesteps().len(), 1000, "DDPM default: every step");

    for bad in [
        r#"{"stpes":10}"#,
        r#"{"kind":"ddim","guidance":3}"#,
        r#"{"kind":"euler"}"#,
    ] {
        assert!(serde_json::from_str::<SamplerConfig>(bad).is_err(), "{bad}");
    }

    // Cold: needs a degradation and an x0-predicting denoiser.
    let cold: SamplerConfig = serde_json::from_str(r#"{"kind":"cold"}"#).unwrap();
    assert!(matches!(
        cold.build(&s, None),
        Err(SampleError::MissingDegradation)
    ));
    let fade: DegradationConfig = serde_json::from_str(r#"{"kind":"fade"}"#).unwrap();
    let sampler = cold
        .build(&s, Some(fade.build(&s, Device::Cpu).unwrap()))
        .unwrap();
    assert_eq!(sampler.name(), "cold");
    assert_eq!(sampler.timesteps().len(), 50, "cold default: every level");
    for p in [Prediction::Eps, Prediction::V] {
        let r = sampler.sample(
            &bounded(p),
            randn(1, &SHAPE),
            &Conditioning::none(),
            &mut PerImageNoise::new(0, 0, 4),
            &mut no_callback(),
        );
        match r {
            Err(SampleError::Prediction {
                sampler,
                needed,
                got,
            }) => {
                assert_eq!(sampler, "cold");
                assert_eq!(needed, Prediction::X0);
                assert_eq!(got, p);
            }
            other => panic!("{p:?}: expected a prediction error, got {other:?}"),
        }
    }
    let steps = cold
        .apply(&SamplerKeys {
            steps: Some(51),
            ..SamplerKeys::default()
        })
        .unwrap();
    let fade_deg = || Some(fade.build(&s, Device::Cpu).unwrap());
    match steps.build(&s, fade_deg()) {
        Err(e) => assert_eq!(key_of(e), "sampler.steps"),
        Ok(_) => panic!("cold steps 51 > 50 levels built"),
    }

    // x0 processing settings.
    let with = |json: &str| -> SamplerConfig { serde_json::from_str(json).unwrap() };
    let thr = with(r#"{"thresholding":true}"#);
    assert_eq!(
        thr.x0_processing(),
        Ok(X0Processing::DynamicThreshold {
            ratio: 0.995,
            max_value: 1.0
        }),
        "thresholding takes precedence over clip_sample"
    );
    for (json, key) in [
        (
            r#"{"thresholding":true,"dynamic_thresholding_ratio":0}"#,
            "sampler.dynamic_thresholding_ratio",
        ),
        (
            r#"{"thresholding":true,"dynamic_thresholding_ratio":1.5}"#,
            "sampler.dynamic_thresholding_ratio",
        ),
        (
            r#"{"thresholding":true,"sample_max_value":0.5}"#,
            "sampler.sample_max_value",
        ),
        (r#"{"clip_sample_range":0}"#, "sampler.clip_sample_range"),
        (r#"{"eta":-1}"#, "sampler.eta"),
    ] {
        let cfg = with(json);
        assert_eq!(key_of(build_err(&cfg, &s)), key, "{json}");
        if key != "sampler.eta" {
            match cfg.x0_processing() {
                Err(ScheduleError::Invalid { key: k, .. }) => assert_eq!(k, key, "{json}"),
                Ok(p) => panic!("{json}: {p:?}"),
            }
        }
    }
    assert_eq!(
        with(r#"{"clip_sample":false}"#).x0_processing(),
        Ok(X0Processing::None)
    );

    // Step counts outside [1, T].
    for kind in ["ddim", "ddpm"] {
        for steps in [0, 1001] {
            let cfg = with(&format!(r#"{{"kind":"{kind}","steps":{steps}}}"#));
            let key = key_of(build_err(&cfg, &s));
            assert!(key.ends_with("steps"), "{kind} steps {steps}: key {key}");
        }
        let cfg = with(&format!(
            r#"{{"kind":"{kind}","spacing":"trailing","steps_offset":1}}"#
        ));
        let key = key_of(build_err(&cfg, &s));
        assert!(key.ends_with("steps_offset"), "{kind}: key {key}");
    }
}

/// The `ratio` quantile of `v` with linear interpolation (torch's default).
fn quantile(mut v: Vec<f64>, ratio: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = ratio * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

#[test]
fn x0_processing_clip_and_dynamic_threshold() {
    let mut rng = Lcg::new(17);
    let x = rng.uniform_tensor(&[3, 3, 8, 8], -4.0, 4.0);
    let clipped = X0Processing::Clip { range: 1.5 }.apply(x.copy());
    assert!(clipped.equal(&x.clamp(-1.5, 1.5)));
    assert!(X0Processing::None.apply(x.copy()).equal(&x));

    // Sample 0 within [−1, 1], sample 1 scaled by 5, sample 2 by 2.
    let base = rng.uniform_tensor(&[3, 3, 8, 8], -1.0, 1.0);
    let scales = Tensor::from_slice(&[1.0f32, 5.0, 2.0]).reshape([3, 1, 1, 1]);
    let x = &base * &scales;
    for max_value in [1.0, 10.0] {
        let p = X0Processing::DynamicThreshold {
            ratio: 0.995,
            max_value,
        };
        let out = p.apply(x.copy());
        assert_eq!(out.size(), x.size());
        // Within [−1, 1] it is the identity, whatever the rest of the batch holds.
        assert!(
            max_abs_diff(&out.get(0), &x.get(0)) < 1e-7,
            "max_value {max_value}: sample 0 changed"
        );
        let alone = p.apply(x.get(0).unsqueeze(0));
        assert!(max_abs_diff(&alone.get(0), &x.get(0)) < 1e-7);
        for i in 1..3 {
            let xi = x.get(i);
            let values = Vec::<f64>::try_from(xi.reshape([-1]).to_kind(Kind::Double)).unwrap();
            let q = quantile(values.iter().map(|v| v.abs()).collect(), 0.995);
            let thr = q.clamp(1.0, max_value);
            let want = xi.clamp(-thr, thr) / thr;
            let got = out.get(i);
            assert!(
                max_abs_diff(&got, &want) < 1e-5,
                "max_value {max_value}, sample {i}: threshold {thr}"
            );
            let max = got.abs().max().double_value(&[]);
            assert!((max - 1.0).abs() < 1e-6, "sample {i}: max |x| = {max}");
            // Independent of the batch: the sample alone gives the same.
            let alone = p.apply(xi.unsqueeze(0));
            assert!(max_abs_diff(&alone.get(0), &got) < 1e-6, "sample {i} alone");
            if max_value == 10.0 {
                // The 0.995-quantile of |x| maps to 1, and about 0.5% of entries saturate.
                let n = values.len() as f64;
                let saturated = values.iter().filter(|v| v.abs() >= q).count() as f64;
                assert!(
                    saturated >= 1.0 && saturated <= (0.005 * n).ceil() + 1.0,
                    "sample {i}: {saturated} of {n} saturated"
                );
                let scaled = Tensor::from_slice(&[q as f32]).clamp(-thr, thr) / thr;
                assert!((scaled.double_value(&[0]) - 1.0).abs() < 1e-6);
            }
        }
    }
}

/// x₀ in [−1, 1], the degradation, and D(x₀, T).
fn cold_setup(json: &str) -> (Tensor, Box<dyn Degradation>, Tensor) {
    let s = schedule(BetaScheduleKind::Linear, 10, false);
    let cfg: DegradationConfig = serde_json::from_str(json).unwrap();
    let d = cfg.build(&s, Device::Cpu).unwrap();
    let x0 = Lcg::new(23).uniform_tensor(&[3, 3, 16, 16], -1.0, 1.0);
    let t = Tensor::full([3], d.num_steps(), (Kind::Int64, Device::Cpu));
    let x_t = d.degrade(&x0, &t, None);
    (x0, d, x_t)
}

fn cold_run(
    json: &str,
    steps: Option<usize>,
    algorithm: ColdAlgorithm,
    oracle_offset: f64,
) -> (Tensor, Tensor) {
    let (x0, d, x_t) = cold_setup(json);
    let sampler = ColdSampler::new(d, steps, algorithm, X0Processing::None).unwrap();
    let target = &x0 + oracle_offset;
    let oracle = FnDenoiser::new(
        Prediction::X0,
        |_: &Tensor, _: &Tensor, _: &Conditioning| target.copy(),
    );
    let out = sampler
        .sample(
            &oracle,
            x_t,
            &Conditioning::none(),
            &mut PerImageNoise::new(0, 0, 3),
            &mut no_callback(),
        )
        .unwrap();
    (x0, out)
}

const FADE: &str = r#"{"kind":"fade","steps":20,"fill":0.25}"#;
const BLUR: &str = r#"{"kind":"blur","steps":10,"sigma_max":2.0}"#;

#[test]
fn cold_sampler_with_an_exact_oracle_recovers_x0() {
    for json in [FADE, BLUR] {
        let (x0, _, x_t) = cold_setup(json);
        assert!(max_abs_diff(&x0, &x_t) > 0.1, "{json}: D(x0, T) is x0");
        for algorithm in [ColdAlgorithm::Naive, ColdAlgorithm::Improved] {
            for steps in [None, Some(3), Some(1)] {
                let (x0, out) = cold_run(json, steps, algorithm, 0.0);
                let err = max_abs_diff(&x0, &out);
                assert!(err < 1e-5, "{json} {algorithm:?} {steps:?}: error {err}");
            }
        }
    }
}

/// Algorithm 2's update x_t − D(x̂₀, t) + D(x̂₀, t') cancels any error that D maps to the same
/// value at every level. A constant offset is such an error for blur (a normalised kernel with
/// reflect padding keeps constants), so Algorithm 2 still recovers x₀ while Algorithm 1 returns
/// the oracle's x̂₀. For the (linear) fade the offset passes through both algorithms unchanged.
#[test]
fn cold_algorithm_2_cancels_an_oracle_offset_under_blur() {
    let offset = 0.01;
    let (x0, naive) = cold_run(BLUR, None, ColdAlgorithm::Naive, offset);
    let (_, improved) = cold_run(BLUR, None, ColdAlgorithm::Improved, offset);
    let e1 = max_abs_diff(&x0, &naive);
    let e2 = max_abs_diff(&x0, &improved);
    assert!((e1 - offset).abs() < 1e-5, "algorithm 1 error {e1}");
    assert!(e2 < 1e-4, "algorithm 2 error {e2}");

    let (x0, naive) = cold_run(FADE, None, ColdAlgorithm::Naive, offset);
    let (_, improved) = cold_run(FADE, None, ColdAlgorithm::Improved, offset);
    let e1 = max_abs_diff(&x0, &naive);
    let e2 = max_abs_diff(&x0, &improved);
    assert!((e1 - offset).abs() < 1e-5, "fade algorithm 1 error {e1}");
    assert!(e2 <= e1 + 1e-5, "fade algorithm 2 error {e2} > {e1}");
}
