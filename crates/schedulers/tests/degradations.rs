//! Properties of the cold-diffusion degradation operators and their config.

use difflab_schedulers::degradation::{Fade, GaussianBlur, GaussianMask, Pixelate};
use difflab_schedulers::{
    Degradation, DegradationConfig, NoiseSchedule, ScheduleConfig, ScheduleError,
};
use tch::{Device, Kind, Tensor};

fn schedule() -> NoiseSchedule {
    ScheduleConfig::default().build().unwrap()
}

fn parse(json: &str) -> DegradationConfig {
    serde_json::from_str(json).unwrap()
}

/// Every degradation with its default parameters (noise on the default schedule).
fn all_default() -> Vec<Box<dyn Degradation>> {
    let s = schedule();
    ["noise", "blur", "fade", "mask", "pixelate"]
        .iter()
        .map(|k| {
            parse(&format!(r#"{{"kind":"{k}"}}"#))
                .build(&s, Device::Cpu)
                .unwrap()
        })
        .collect()
}

/// The deterministic ones, with parameters chosen so that tiny test images show every level.
fn deterministic() -> Vec<Box<dyn Degradation>> {
    vec![
        Box::new(GaussianBlur::new(6, 2.5).unwrap()),
        Box::new(Fade::new(5, 0.25).unwrap()),
        Box::new(GaussianMask::new(6, 3.0, 0.0).unwrap()),
        Box::new(Pixelate::new(4, 2).unwrap()),
    ]
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn levels(v: &[i64]) -> Tensor {
    Tensor::from_slice(v)
}

fn full(b: usize, level: i64) -> Tensor {
    levels(&vec![level; b])
}

fn values(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&x.to_kind(Kind::Double).reshape([-1])).unwrap()
}

#[test]
fn level_zero_is_the_identity() {
    let shapes: [[i64; 4]; 5] = [
        [1, 1, 5, 7],
        [2, 3, 8, 8],
        [3, 2, 16, 9],
        [2, 1, 1, 6],
        [1, 2, 32, 32],
    ];
    for seed in 0..3 {
        for (i, shape) in shapes.iter().enumerate() {
            tch::manual_seed(seed * 10 + i as i64);
            let kind = if i % 2 == 0 {
                Kind::Float
            } else {
                Kind::Double
            };
            let x = Tensor::randn(shape, (kind, Device::Cpu));
            let z = Tensor::randn(shape, (kind, Device::Cpu));
            for d in all_default().iter().chain(deterministic().iter()) {
                let t = full(shape[0] as usize, 0);
                for noise in [None, Some(&z)] {
                    let y = d.degrade(&x, &t, noise);
                    assert_eq!(y.size(), x.size(), "{} shape", d.name());
                    assert_eq!(y.kind(), kind, "{} kind", d.name());
                    assert_eq!(y.device(), x.device(), "{} device", d.name());
                    let err = max_abs_diff(&y, &x);
                    assert!(
                        err <= 1e-6,
                        "{} at t=0 on {shape:?}: max |D(x,0) - x| = {err}",
                        d.name()
                    );
                }
            }
        }
    }
}

#[test]
fn batch_with_mixed_levels_equals_each_sample_alone() {
    tch::manual_seed(1);
    let x = Tensor::randn([6, 2, 12, 10], (Kind::Float, Device::Cpu));
    let z = Tensor::randn([6, 2, 12, 10], (Kind::Float, Device::Cpu));
    for d in all_default().iter().chain(deterministic().iter()) {
        let big = d.num_steps();
        let lv = [0, big, big / 2, 1, big / 2, big - 1];
        let batch = d.degrade(&x, &levels(&lv), Some(&z));
        for (i, &l) in lv.iter().enumerate() {
            let i = i as i64;
            let alone = d.degrade(&x.narrow(0, i, 1), &levels(&[l]), Some(&z.narrow(0, i, 1)));
            let err = max_abs_diff(&batch.narrow(0, i, 1), &alone);
            assert!(
                err <= 1e-5,
                "{}: sample {i} at t={l} differs by {err} in a mixed batch",
                d.name()
            );
        }
    }
}

#[test]
fn levels_outside_the_range_are_clamped() {
    tch::manual_seed(2);
    let x = Tensor::randn([2, 3, 9, 11], (Kind::Float, Device::Cpu));
    let z = Tensor::randn([2, 3, 9, 11], (Kind::Float, Device::Cpu));
    for d in all_default().iter().chain(deterministic().iter()) {
        let big = d.num_steps();
        let out = d.degrade(&x, &levels(&[-3, big + 7]), Some(&z));
        let clamped = d.degrade(&x, &levels(&[0, big]), Some(&z));
        assert!(
            max_abs_diff(&out, &clamped) <= 1e-6,
            "{}: out-of-range levels not clamped",
            d.name()
        );
        assert!(
            max_abs_diff(&out.narrow(0, 0, 1), &x.narrow(0, 0, 1)) <= 1e-6,
            "{}: t<0 not identity",
            d.name()
        );
    }
}

/// ‖D(x, t) − x‖ over t = 0..=T.
fn distances(d: &dyn Degradation, x: &Tensor, noise: Option<&Tensor>, ts: &[i64]) -> Vec<f64> {
    ts.iter()
        .map(|&t| {
            (d.degrade(x, &full(1, t), noise) - x)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
                .sqrt()
        })
        .collect()
}

#[test]
fn severity_increases_with_level() {
    tch::manual_seed(3);
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    for d in all_default().iter().skip(1).chain(deterministic().iter()) {
        let ts: Vec<i64> = (0..=d.num_steps()).collect();
        let dist = distances(d.as_ref(), &x, None, &ts);
        for w in dist.windows(2) {
            assert!(
                w[1] > w[0],
                "{}: distance from x0 not increasing: {dist:?}",
                d.name()
            );
        }
    }
    let z = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let noise = &all_default()[0];
    let dist = distances(noise.as_ref(), &x, Some(&z), &[0, 1, 10, 100, 500, 1000]);
    for w in dist.windows(2) {
        assert!(
            w[1] > w[0],
            "noise: distance from x0 not increasing: {dist:?}"
        );
    }
}

/// Energy of horizontal and vertical finite differences (high frequencies).
fn high_freq_energy(x: &Tensor) -> f64 {
    let (_, _, h, w) = x.size4().unwrap();
    let dx = x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1);
    let dy = x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1);
    (dx.square().sum(Kind::Double) + dy.square().sum(Kind::Double)).double_value(&[])
}

#[test]
fn blur_removes_high_frequencies_monotonically() {
    tch::manual_seed(4);
    let x = Tensor::randn([1, 2, 24, 24], (Kind::Float, Device::Cpu));
    let d = parse(r#"{"kind":"blur"}"#)
        .build(&schedule(), Device::Cpu)
        .unwrap();
    let energy: Vec<f64> = (0..=d.num_steps())
        .map(|t| high_freq_energy(&d.degrade(&x, &full(1, t), None)))
        .collect();
    for w in energy.windows(2) {
        assert!(
            w[1] < w[0],
            "blur: high-frequency energy not decreasing: {energy:?}"
        );
    }
    assert!(
        energy[energy.len() - 1] < 0.05 * energy[0],
        "blur at T barely blurs: {energy:?}"
    );
}

#[test]
fn blur_preserves_constants_and_the_image_sum() {
    tch::manual_seed(5);
    let d = GaussianBlur::new(4, 3.0).unwrap();
    let c = Tensor::full([2, 3, 10, 13], 0.7, (Kind::Float, Device::Cpu));
    let t = levels(&[2, 4]);
    assert!(
        max_abs_diff(&d.degrade(&c, &t, None), &c) <= 1e-5,
        "blur changes a constant image (border darkening)"
    );
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu)) + 1.0;
    let y = d.degrade(&x, &t, None);
    let (sx, sy) = (
        x.sum(Kind::Double).double_value(&[]),
        y.sum(Kind::Double).double_value(&[]),
    );
    assert!(
        (sx - sy).abs() <= 0.02 * sx.abs(),
        "blur changes the image sum: {sx} -> {sy}"
    );
}

#[test]
fn fade_at_the_last_level_is_the_fill() {
    tch::manual_seed(6);
    let x = Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu));
    let d = Fade::new(7, 0.3).unwrap();
    let y = d.degrade(&x, &full(3, 7), None);
    assert!(max_abs_diff(&y, &x.full_like(0.3)) <= 1e-6);
    let half = d.degrade(&x, &full(3, 2), None);
    let expected = &x * (5.0 / 7.0) + 0.3 * 2.0 / 7.0;
    assert!(max_abs_diff(&half, &expected) <= 1e-6);
}

#[test]
fn pixelate_at_the_last_level_has_few_distinct_values() {
    tch::manual_seed(7);
    for (shape, min_size) in [([2, 3, 32, 32], 4), ([1, 2, 12, 20], 3), ([1, 1, 7, 5], 2)] {
        let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
        let d = Pixelate::new(5, min_size).unwrap();
        let y = d.degrade(&x, &full(shape[0] as usize, 5), None);
        for b in 0..shape[0] {
            for c in 0..shape[1] {
                let mut v = values(&y.get(b).get(c));
                v.sort_by(f64::total_cmp);
                v.dedup();
                assert!(
                    v.len() as i64 <= min_size * min_size,
                    "{shape:?}: {} distinct values",
                    v.len()
                );
            }
        }
        let means = (
            x.mean_dim([2i64, 3].as_slice(), false, Kind::Double),
            y.mean_dim([2i64, 3].as_slice(), false, Kind::Double),
        );
        assert!(
            max_abs_diff(&means.0, &means.1) < 0.2,
            "pixelate moved the channel means too far"
        );
    }
}

#[test]
fn mask_zeroes_the_centre_pixel() {
    tch::manual_seed(8);
    for (h, w) in [(9, 10), (8, 8), (15, 7)] {
        let x = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu)) + 2.0;
        let d = parse(r#"{"kind":"mask"}"#)
            .build(&schedule(), Device::Cpu)
            .unwrap();
        for t in [1, d.num_steps()] {
            let y = d.degrade(&x, &full(2, t), None);
            let centre = y.narrow(2, h / 2, 1).narrow(3, w / 2, 1);
            assert!(
                centre.abs().max().double_value(&[]) == 0.0,
                "mask at t={t} keeps the centre of {h}x{w}"
            );
        }
    }
    let d = GaussianMask::new(10, 2.0, -1.0).unwrap();
    let x = Tensor::randn([1, 1, 33, 33], (Kind::Float, Device::Cpu));
    let y = d.degrade(&x, &full(1, 10), None);
    assert_eq!(
        y.double_value(&[0, 0, 16, 16]),
        -1.0,
        "masked pixels take the fill value"
    );
    assert!(
        (y.double_value(&[0, 0, 0, 0]) - x.double_value(&[0, 0, 0, 0])).abs() < 1e-4,
        "corner should survive"
    );
}

#[test]
fn deterministic_degradations_are_differentiable() {
    tch::manual_seed(9);
    for d in deterministic().iter().chain(all_default().iter().skip(1)) {
        let x = Tensor::randn([3, 2, 12, 12], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let big = d.num_steps();
        let y = d.degrade(&x, &levels(&[0, big / 2, big]), None);
        y.sum(Kind::Float).backward();
        let g = x.grad();
        assert!(g.defined(), "{}: no gradient", d.name());
        let finite = g.isfinite().all().int64_value(&[]) == 1;
        let total = g.abs().sum(Kind::Double).double_value(&[]);
        assert!(
            finite && total > 0.0,
            "{}: gradient finite={finite} |g|={total}",
            d.name()
        );
        // The identity sample passes gradients straight through.
        assert!(
            max_abs_diff(&g.get(0), &g.get(0).ones_like()) <= 1e-6,
            "{}: t=0 gradient is not 1",
            d.name()
        );
    }
}

#[test]
fn config_round_trips_and_defaults() {
    let variants = [
        DegradationConfig::Noise {},
        DegradationConfig::Blur {
            steps: 20,
            sigma_max: 2.5,
        },
        DegradationConfig::Fade {
            steps: 10,
            fill: -1.0,
        },
        DegradationConfig::Mask {
            steps: 30,
            width: 5.0,
            fill: 0.5,
        },
        DegradationConfig::Pixelate {
            steps: 3,
            min_size: 8,
        },
    ];
    let s = schedule();
    for v in &variants {
        let json = serde_json::to_string(v).unwrap();
        let back: DegradationConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, v, "round trip of {json}");
        let d = v.build(&s, Device::Cpu).unwrap();
        assert_eq!(d.name(), v.name());
    }
    assert_eq!(
        parse(r#"{"kind":"blur"}"#),
        DegradationConfig::Blur {
            steps: 40,
            sigma_max: 3.0
        }
    );
    assert_eq!(
        parse(r#"{"kind":"fade"}"#),
        DegradationConfig::Fade {
            steps: 50,
            fill: 0.0
        }
    );
    assert_eq!(
        parse(r#"{"kind":"mask"}"#),
        DegradationConfig::Mask {
            steps: 50,
            width: 4.0,
            fill: 0.0
        }
    );
    assert_eq!(
        parse(r#"{"kind":"pixelate"}"#),
        DegradationConfig::Pixelate {
            steps: 8,
            min_size: 4
        }
    );
    assert_eq!(
        parse(r#"{"kind":"blur","sigma_max":1.5}"#),
        DegradationConfig::Blur {
            steps: 40,
            sigma_max: 1.5
        }
    );
    let blur = parse(r#"{"kind":"blur"}"#).build(&s, Device::Cpu).unwrap();
    assert_eq!((blur.name(), blur.num_steps()), ("blur", 40));
    assert_eq!(
        parse(r#"{"kind":"noise"}"#)
            .build(&s, Device::Cpu)
            .unwrap()
            .num_steps(),
        1000
    );
}

#[test]
fn config_rejects_unknown_fields_and_kinds() {
    for json in [
        r#"{"kind":"blur","sigma":1.0}"#,
        r#"{"kind":"fade","sigma_max":1.0}"#,
        r#"{"kind":"noise","steps":3}"#,
        r#"{"kind":"swirl"}"#,
        r#"{"kind":"pixelate","min_size":2.5}"#,
    ] {
        assert!(
            serde_json::from_str::<DegradationConfig>(json).is_err(),
            "accepted {json}"
        );
    }
}

#[test]
fn invalid_parameters_name_their_key() {
    let s = schedule();
    let cases = [
        (
            r#"{"kind":"blur","sigma_max":-1.0}"#,
            "degradation.sigma_max",
        ),
        (
            r#"{"kind":"blur","sigma_max":0.0}"#,
            "degradation.sigma_max",
        ),
        (r#"{"kind":"blur","steps":0}"#, "degradation.steps"),
        (r#"{"kind":"fade","steps":-2}"#, "degradation.steps"),
        (r#"{"kind":"mask","width":0.0}"#, "degradation.width"),
        (r#"{"kind":"mask","steps":0}"#, "degradation.steps"),
        (
            r#"{"kind":"pixelate","min_size":0}"#,
            "degradation.min_size",
        ),
        (r#"{"kind":"pixelate","steps":0}"#, "degradation.steps"),
    ];
    for (json, key) in cases {
        let err = parse(json)
            .build(&s, Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{json} accepted"));
        let ScheduleError::Invalid { key: k, .. } = &err;
        assert_eq!(*k, key, "{json}: {err}");
        assert!(err.to_string().contains(key));
    }
    let nan_fill = DegradationConfig::Fade {
        steps: 5,
        fill: f64::NAN,
    };
    let ScheduleError::Invalid { key, .. } = nan_fill.build(&s, Device::Cpu).err().unwrap();
    assert_eq!(key, "degradation.fill");
    let inf_sigma = DegradationConfig::Blur {
        steps: 5,
        sigma_max: f64::INFINITY,
    };
    assert!(inf_sigma.build(&s, Device::Cpu).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU: run with `cargo test -- --ignored` on a GPU machine"]
fn runs_on_cuda_like_on_cpu() {
    assert!(tch::Cuda::is_available(), "no CUDA GPU");
    tch::manual_seed(10);
    let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let z = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let gpu = Device::Cuda(0);
    let s = schedule();
    for kind in ["noise", "blur", "fade", "mask", "pixelate"] {
        let cfg = parse(&format!(r#"{{"kind":"{kind}"}}"#));
        let (dc, dg) = (
            cfg.build(&s, Device::Cpu).unwrap(),
            cfg.build(&s, gpu).unwrap(),
        );
        let big = dc.num_steps();
        let t = levels(&[0, 1, big / 2, big]);
        let yc = dc.degrade(&x, &t, Some(&z));
        let yg = dg.degrade(&x.to_device(gpu), &t, Some(&z.to_device(gpu)));
        assert_eq!(yg.device(), gpu, "{kind}");
        assert!(
            max_abs_diff(&yc, &yg.to_device(Device::Cpu)) <= 1e-4,
            "{kind}: CUDA and CPU differ"
        );
    }
}
