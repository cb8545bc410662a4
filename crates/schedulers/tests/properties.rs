//! Property tests: invariants checked over many seeded random configurations (an inline LCG, so
//! every run sees the same cases and a failure names the case that broke).

use difflab_schedulers::posterior::{MIN_VARIANCE, Posterior};
use difflab_schedulers::{
    BetaScheduleKind, ForwardProcess, NoiseSchedule, Prediction, Schedule, ScheduleConfig,
    ScheduleError, TimestepSpacing, inference_timesteps,
};
use tch::{Device, Kind, Tensor};

const CASES: usize = 200;
const SPACINGS: [TimestepSpacing; 3] = [
    TimestepSpacing::Leading,
    TimestepSpacing::Trailing,
    TimestepSpacing::Linspace,
];
const PREDICTIONS: [Prediction; 3] = [Prediction::Eps, Prediction::X0, Prediction::V];

#[path = "../../../tests/support/lcg.rs"]
mod lcg;
use lcg::Lcg;

/// A random valid config of `kind`: T ∈ [2, 2000], betas in ranges that keep ᾱ_{T−1} a normal
/// f32 (so "in (0, 1]" is a property of the code, not of underflow).
fn random_config(rng: &mut Lcg, kind: BetaScheduleKind) -> ScheduleConfig {
    let t = if rng.uniform() < 0.3 {
        rng.int(2, 20)
    } else {
        rng.int(2, 2000)
    };
    let mut cfg = ScheduleConfig::new(kind, t);
    let b0 = rng.log_range(1e-5, 2e-3);
    let b1 = if rng.uniform() < 0.1 {
        b0
    } else {
        rng.range(b0, 0.03)
    };
    cfg.beta_start = Some(b0);
    cfg.beta_end = Some(b1);
    cfg.cosine_s = rng.range(0.004, 0.02);
    cfg.max_beta = rng.range(0.5, 0.999);
    cfg
}

fn invalid_key<T: std::fmt::Debug>(r: Result<T, ScheduleError>) -> &'static str {
    match r {
        Err(ScheduleError::Invalid { key, .. }) => key,
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
    }
}

#[test]
fn beta_tables_are_valid_for_random_configs() {
    let mut rng = Lcg::new(1);
    for case in 0..CASES {
        for kind in BetaScheduleKind::ALL {
            let cfg = random_config(&mut rng, kind);
            let s = cfg
                .build()
                .unwrap_or_else(|e| panic!("case {case} {cfg:?}: {e}"));
            let t = cfg.timesteps;
            assert_eq!(s.num_train_timesteps(), t, "case {case} {cfg:?}");
            assert_eq!(s.betas.len(), t);
            assert_eq!(s.alphas.len(), t);
            for (i, &b) in s.betas.iter().enumerate() {
                assert!(b > 0.0 && b < 1.0, "case {case} {cfg:?}: beta[{i}] = {b}");
            }
            for (i, &a) in s.alphas_cumprod.iter().enumerate() {
                assert!(
                    a > 0.0 && a <= 1.0,
                    "case {case} {cfg:?}: alpha_bar[{i}] = {a}"
                );
            }
            for (i, w) in s.alphas_cumprod.windows(2).enumerate() {
                assert!(
                    w[1] < w[0],
                    "case {case} {cfg:?}: alpha_bar not strictly decreasing at {i}: {} -> {}",
                    w[0],
                    w[1]
                );
            }
            for (i, snr) in s.snr_table().into_iter().enumerate() {
                assert!(
                    snr.is_finite() && snr > 0.0,
                    "case {case} {cfg:?}: snr[{i}] = {snr}"
                );
            }
        }
    }
}

#[test]
fn zero_terminal_snr_rescale_properties_for_random_configs() {
    let mut rng = Lcg::new(2);
    for case in 0..CASES {
        for kind in BetaScheduleKind::ALL {
            let mut cfg = random_config(&mut rng, kind);
            let plain = cfg.build().unwrap();
            cfg.zero_terminal_snr = true;
            let s = cfg.build().unwrap();
            let t = cfg.timesteps;
            let what = format!("case {case} {cfg:?}");
            assert_eq!(s.alphas_cumprod.len(), t, "{what}");
            assert_eq!(s.betas.len(), t, "{what}");
            let (old0, new0) = (plain.alphas_cumprod[0], s.alphas_cumprod[0]);
            assert!(
                (new0 - old0).abs() <= f32::EPSILON as f64 * old0,
                "{what}: first alpha_bar changed {old0} -> {new0}"
            );
            assert_eq!(s.alphas_cumprod[t - 1], 0.0, "{what}: last alpha_bar");
            assert_eq!(s.snr(t - 1), 0.0, "{what}: terminal SNR");
            for (i, w) in s.alphas_cumprod.windows(2).enumerate() {
                assert!(w[1] <= w[0], "{what}: alpha_bar increases at {i}: {w:?}");
            }
            for (i, &a) in s.alphas_cumprod.iter().enumerate() {
                assert!(
                    a.is_finite() && (0.0..=1.0).contains(&a),
                    "{what}: ab[{i}] = {a}"
                );
            }
            for (i, (&b, &a)) in s.betas.iter().zip(&s.alphas).enumerate() {
                assert!(
                    b.is_finite() && (0.0..=1.0).contains(&b),
                    "{what}: beta[{i}] = {b}"
                );
                assert!(
                    a.is_finite() && (0.0..=1.0).contains(&a),
                    "{what}: alpha[{i}] = {a}"
                );
            }
            assert_eq!(s.betas[t - 1], 1.0, "{what}: last beta");
            for (i, snr) in s.snr_table().into_iter().enumerate() {
                assert!(snr.is_finite() && snr >= 0.0, "{what}: snr[{i}] = {snr}");
            }
        }
    }
}

/// Common checks for a valid timestep list.
fn check_timesteps(ts: &[i64], t: usize, n: usize, what: &str) {
    assert_eq!(ts.len(), n, "{what}: {ts:?}");
    for &x in ts {
        assert!((0..t as i64).contains(&x), "{what}: {x} outside [0, {t})");
    }
    for w in ts.windows(2) {
        assert!(w[1] < w[0], "{what}: not strictly descending: {w:?}");
    }
}

#[test]
fn inference_timesteps_properties_for_random_t_and_n() {
    let mut rng = Lcg::new(3);
    for case in 0..CASES * 5 {
        let t = if rng.uniform() < 0.3 {
            rng.int(1, 20)
        } else {
            rng.int(1, 2000)
        };
        let n = if rng.uniform() < 0.5 {
            rng.int(1, t.min(60))
        } else {
            rng.int(1, t)
        };
        for spacing in SPACINGS {
            let what = format!("case {case}: T = {t}, n = {n}, {spacing:?}");
            let ts =
                inference_timesteps(t, n, spacing, 0).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_timesteps(&ts, t, n, &what);
            let (first, last) = (ts[0], ts[n - 1]);
            match spacing {
                TimestepSpacing::Leading => assert_eq!(last, 0, "{what}"),
                TimestepSpacing::Trailing => assert_eq!(first, t as i64 - 1, "{what}"),
                TimestepSpacing::Linspace if n >= 2 => {
                    assert_eq!(first, t as i64 - 1, "{what}");
                    assert_eq!(last, 0, "{what}");
                }
                TimestepSpacing::Linspace => assert_eq!(ts, [0], "{what}"),
            }
        }
        // Leading with every kind of valid offset, and the first invalid one.
        let ratio = t / n;
        let max_offset = t - 1 - (n - 1) * ratio;
        for offset in [1.min(max_offset), rng.int(0, max_offset), max_offset] {
            let what = format!("case {case}: T = {t}, n = {n}, leading + {offset}");
            let ts = inference_timesteps(t, n, TimestepSpacing::Leading, offset)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            check_timesteps(&ts, t, n, &what);
            assert_eq!(ts[n - 1], offset as i64, "{what}");
        }
        assert_eq!(
            invalid_key(inference_timesteps(
                t,
                n,
                TimestepSpacing::Leading,
                max_offset + 1
            )),
            "sampler.steps_offset",
            "case {case}: T = {t}, n = {n}, offset {}",
            max_offset + 1
        );
        // Invalid step counts and offsets on spacings that do not take one.
        for spacing in SPACINGS {
            let what = format!("case {case}: T = {t}, {spacing:?}");
            assert_eq!(
                invalid_key(inference_timesteps(t, 0, spacing, 0)),
                "sampler.steps",
                "{what}"
            );
            assert_eq!(
                invalid_key(inference_timesteps(t, t + 1, spacing, 0)),
                "sampler.steps",
                "{what}"
            );
        }
        let offset = rng.int(1, 5);
        for spacing in [TimestepSpacing::Trailing, TimestepSpacing::Linspace] {
            assert_eq!(
                invalid_key(inference_timesteps(t, n, spacing, offset)),
                "sampler.steps_offset",
                "case {case}: T = {t}, n = {n}, {spacing:?} + {offset}"
            );
        }
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// x_t, ε, x₀ and v for a random ᾱ, computed elementwise in f64 on the host.
#[test]
fn prediction_conversions_round_trip() {
    let mut rng = Lcg::new(4);
    for case in 0..CASES {
        let alpha_bar = if rng.uniform() < 0.5 {
            rng.range(1e-4, 1.0 - 1e-4)
        } else {
            rng.log_range(1e-6, 1.0)
        }
        .min(1.0 - 1e-6);
        let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        let shape = [3i64, 2, 4, 4];
        let x0 = rng.normal_tensor(&shape, Kind::Double);
        let eps = rng.normal_tensor(&shape, Kind::Double);
        let x_t = &x0 * a + &eps * s;
        let what = format!("case {case}: alpha_bar = {alpha_bar}");

        // v = a·ε − s·x₀, elementwise.
        let v = Prediction::V.target(&x0, &eps, a, s);
        let x0v = Vec::<f64>::try_from(x0.reshape([-1])).unwrap();
        let epsv = Vec::<f64>::try_from(eps.reshape([-1])).unwrap();
        let vv = Vec::<f64>::try_from(v.reshape([-1])).unwrap();
        for i in 0..vv.len() {
            let want = a * epsv[i] - s * x0v[i];
            assert!((vv[i] - want).abs() < 1e-12, "{what}: v[{i}]");
        }

        for p in PREDICTIONS {
            let out = p.target(&x0, &eps, a, s);
            let x0_hat = p.to_x0(&out, &x_t, a, s, a);
            let eps_hat = p.to_eps(&out, &x_t, a, s, s);
            assert!(max_abs_diff(&x0_hat, &x0) < 1e-5, "{what}: {p:?} to_x0");
            assert!(max_abs_diff(&eps_hat, &eps) < 1e-5, "{what}: {p:?} to_eps");
            let (x0_split, eps_split) = p.split(&out, &x_t, alpha_bar);
            assert!(
                max_abs_diff(&x0_split, &x0) < 1e-5,
                "{what}: {p:?} split x0"
            );
            assert!(
                max_abs_diff(&eps_split, &eps) < 1e-5,
                "{what}: {p:?} split eps"
            );
        }

        // The per-sample coefficient path (`&Tensor` coefficients) agrees with the scalar one.
        let abs: Vec<f64> = (0..shape[0]).map(|_| rng.range(0.01, 0.99)).collect();
        let ab_t = Tensor::from_slice(&abs).reshape([-1, 1, 1, 1]);
        let (a_t, s_t) = (ab_t.sqrt(), (-&ab_t + 1.0).sqrt());
        let x_t = &x0 * &a_t + &eps * &s_t;
        for p in PREDICTIONS {
            let out = p.target(&x0, &eps, &a_t, &s_t);
            let x0_hat = p.to_x0(&out, &x_t, &a_t, &s_t, &a_t);
            let eps_hat = p.to_eps(&out, &x_t, &a_t, &s_t, &s_t);
            assert!(
                max_abs_diff(&x0_hat, &x0) < 1e-5,
                "{what}: {p:?} per-sample to_x0"
            );
            assert!(
                max_abs_diff(&eps_hat, &eps) < 1e-5,
                "{what}: {p:?} per-sample to_eps"
            );
            for (b, &ab) in abs.iter().enumerate() {
                let (xb, eb) = (x0.get(b as i64), eps.get(b as i64));
                let want = p.target(&xb, &eb, ab.sqrt(), (1.0 - ab).sqrt());
                assert!(
                    max_abs_diff(&out.get(b as i64), &want) < 1e-12,
                    "{what}: {p:?} per-sample target, sample {b}"
                );
            }
        }
    }
}

/// Split in f32 (the samplers' precision) stays within 1e-5 relative where neither divisor is tiny.
#[test]
fn prediction_split_in_f32_round_trips() {
    let mut rng = Lcg::new(5);
    for case in 0..CASES {
        let alpha_bar = rng.range(0.05, 0.95);
        let (a, s) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        let x0 = rng.normal_tensor(&[2, 3, 4, 4], Kind::Float);
        let eps = rng.normal_tensor(&[2, 3, 4, 4], Kind::Float);
        let x_t = &x0 * a + &eps * s;
        for p in PREDICTIONS {
            let out = p.target(&x0, &eps, a, s);
            let (x0_hat, eps_hat) = p.split(&out, &x_t, alpha_bar);
            let tol = 1e-5 * 8.0;
            assert!(
                max_abs_diff(&x0_hat, &x0) < tol,
                "case {case} ab = {alpha_bar}: {p:?} x0"
            );
            assert!(
                max_abs_diff(&eps_hat, &eps) < tol,
                "case {case} ab = {alpha_bar}: {p:?} eps"
            );
        }
    }
}

#[test]
fn forward_process_matches_per_sample_scalar_computation() {
    let mut rng = Lcg::new(6);
    for case in 0..CASES / 2 {
        let kind = rng.pick(&BetaScheduleKind::ALL);
        let mut cfg = random_config(&mut rng, kind);
        cfg.zero_terminal_snr = rng.uniform() < 0.3;
        let s = cfg.build().unwrap();
        let fp = ForwardProcess::new(&s, Device::Cpu);
        let t_max = cfg.timesteps;
        assert_eq!(fp.num_train_timesteps(), t_max as i64);
        let b = rng.int(1, 6) as i64;
        let mut ts: Vec<i64> = (0..b).map(|_| rng.int(0, t_max - 1) as i64).collect();
        ts[0] = t_max as i64 - 1;
        if b > 1 {
            ts[1] = 0;
        }
        let t = Tensor::from_slice(&ts);
        let x0 = rng.normal_tensor(&[b, 3, 4, 4], Kind::Float);
        let noise = rng.normal_tensor(&[b, 3, 4, 4], Kind::Float);
        let x_t = fp.q_sample(&x0, &t, &noise);
        let v = fp.velocity(&x0, &t, &noise);
        assert_eq!(x_t.size(), x0.size());
        let what = format!("case {case} {cfg:?} t = {ts:?}");
        let snr = fp.snr(&t);
        let ab_t = fp.alpha_bar(&t);
        for (i, &ti) in ts.iter().enumerate() {
            let ab = s.alpha_bar(ti as usize);
            let (a, sd) = (ab.sqrt(), (1.0 - ab).sqrt());
            let xi = x0.get(i as i64).to_kind(Kind::Double);
            let ni = noise.get(i as i64).to_kind(Kind::Double);
            let want = &xi * a + &ni * sd;
            assert!(
                max_abs_diff(&x_t.get(i as i64).to_kind(Kind::Double), &want) < 1e-5,
                "{what}: q_sample sample {i}"
            );
            let want_v = &ni * a - &xi * sd;
            assert!(
                max_abs_diff(&v.get(i as i64).to_kind(Kind::Double), &want_v) < 1e-5,
                "{what}: velocity sample {i}"
            );
            assert_eq!(
                ab_t.double_value(&[i as i64]),
                ab,
                "{what}: alpha_bar sample {i}"
            );
            let (got, want) = (snr.double_value(&[i as i64]), s.snr(ti as usize));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-12,
                "{what}: snr sample {i}: {got} vs {want}"
            );
            for p in PREDICTIONS {
                let target = fp.target(p, &x0, &t, &noise).get(i as i64);
                let want = match p {
                    Prediction::Eps => ni.shallow_clone(),
                    Prediction::X0 => xi.shallow_clone(),
                    Prediction::V => want_v.shallow_clone(),
                };
                assert!(
                    max_abs_diff(&target.to_kind(Kind::Double), &want) < 1e-5,
                    "{what}: {p:?} target sample {i}"
                );
            }
        }
    }
}

fn check_posterior(ab: f64, ab_prev: f64, what: &str) {
    let p = Posterior::new(ab, ab_prev);
    // The mean of a noise-free x_t = √ᾱ_t x₀ is √ᾱ_{t'} x₀. β = 1 − ᾱ/ᾱ' is rounded to f32
    // (as diffusers computes it), which costs ~6e-8/(1 − ᾱ_t) in each coefficient.
    let got = p.coef_x0 + p.coef_xt * ab.sqrt();
    let tol = 2e-7 / (1.0 - ab).max(MIN_VARIANCE) + 1e-9;
    assert!(
        (got - ab_prev.sqrt()).abs() <= tol,
        "{what}: coef_x0 + coef_xt·√ᾱ_t = {got}, √ᾱ_t' = {} ({p:?})",
        ab_prev.sqrt()
    );
    assert!(p.coef_x0 >= 0.0 && p.coef_xt >= 0.0, "{what}: {p:?}");
    assert!(p.variance >= 0.0 && p.beta >= 0.0, "{what}: {p:?}");
    assert!(p.beta <= 1.0, "{what}: {p:?}");
    assert!(p.variance <= p.beta, "{what}: β̃ > β ({p:?})");
}

#[test]
fn posterior_mean_of_noise_free_input_and_variance_bounds() {
    let mut rng = Lcg::new(7);
    for case in 0..CASES / 2 {
        let kind = rng.pick(&BetaScheduleKind::ALL);
        let mut cfg = random_config(&mut rng, kind);
        cfg.zero_terminal_snr = rng.uniform() < 0.3;
        let s = cfg.build().unwrap();
        let t_max = cfg.timesteps;
        // Every consecutive training step, and the step past the end (ᾱ' = 1).
        for t in 1..t_max {
            check_posterior(
                s.alpha_bar(t),
                s.alpha_bar(t - 1),
                &format!("case {case} {cfg:?}: t = {t}"),
            );
        }
        check_posterior(s.alpha_bar(0), 1.0, &format!("case {case}: t = 0"));
        // Strided steps.
        let n = rng.int(1, t_max);
        let spacing = rng.pick(&SPACINGS);
        let ts = inference_timesteps(t_max, n, spacing, 0).unwrap();
        for (i, &t) in ts.iter().enumerate() {
            let prev = ts.get(i + 1).map_or(1.0, |&p| s.alpha_bar(p as usize));
            check_posterior(
                s.alpha_bar(t as usize),
                prev,
                &format!("case {case} {cfg:?}: {spacing:?} n = {n}, t = {t}"),
            );
        }
    }
}

#[test]
fn config_errors_name_the_key() {
    let mut rng = Lcg::new(8);
    for case in 0..CASES {
        let kind = rng.pick(&BetaScheduleKind::ALL);
        let base = random_config(&mut rng, kind);
        let what = format!("case {case} {base:?}");
        assert!(base.build().is_ok(), "{what}");

        let mut c = base.clone();
        c.timesteps = rng.int(0, 1);
        assert_eq!(invalid_key(c.build()), "schedule.timesteps", "{what}");

        let mut c = base.clone();
        c.zero_terminal_snr = true;
        c.timesteps = rng.int(0, 1);
        assert_eq!(invalid_key(c.build()), "schedule.timesteps", "{what}");

        if kind == BetaScheduleKind::Cosine {
            let mut c = base.clone();
            c.cosine_s = -rng.range(0.0, 1.0);
            assert_eq!(invalid_key(c.build()), "schedule.cosine_s", "{what}");
            c.cosine_s = 0.0;
            assert_eq!(invalid_key(c.build()), "schedule.cosine_s", "{what}");
            c.cosine_s = f64::NAN;
            assert_eq!(invalid_key(c.build()), "schedule.cosine_s", "{what}");

            let mut c = base.clone();
            c.max_beta = rng.range(1.0, 2.0);
            assert_eq!(invalid_key(c.build()), "schedule.max_beta", "{what}");
            c.max_beta = 1.0;
            assert_eq!(invalid_key(c.build()), "schedule.max_beta", "{what}");
            c.max_beta = 0.0;
            assert_eq!(invalid_key(c.build()), "schedule.max_beta", "{what}");
        } else {
            let mut c = base.clone();
            c.beta_start = Some(-rng.range(0.0, 0.1));
            assert_eq!(invalid_key(c.build()), "schedule.beta_start", "{what}");
            c.beta_start = Some(0.0);
            assert_eq!(invalid_key(c.build()), "schedule.beta_start", "{what}");

            let mut c = base.clone();
            let b0 = c.beta_start.unwrap();
            c.beta_end = Some(b0 * rng.range(0.0, 0.999));
            assert_eq!(invalid_key(c.build()), "schedule.beta_end", "{what}");
            c.beta_end = Some(rng.range(1.0, 2.0));
            assert_eq!(invalid_key(c.build()), "schedule.beta_end", "{what}");
        }
    }
    // Tables from raw betas.
    assert_eq!(
        invalid_key(NoiseSchedule::from_betas(vec![0.1])),
        "schedule.timesteps"
    );
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        assert_eq!(
            invalid_key(NoiseSchedule::from_betas(vec![0.1, bad, 0.2])),
            "schedule.betas",
            "beta {bad}"
        );
    }
}

#[test]
fn config_serde_defaults_aliases_and_unknown_keys() {
    let c: ScheduleConfig = serde_json::from_str(r#"{"kind":"cosine"}"#).unwrap();
    assert_eq!(c, ScheduleConfig::new(BetaScheduleKind::Cosine, 1000));
    assert_eq!(c.cosine_s, 0.008);
    assert_eq!(c.max_beta, 0.999);
    assert!(!c.zero_terminal_snr);
    assert_eq!(c.beta_start, None);
    assert_eq!(c.beta_end, None);

    let c: ScheduleConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, ScheduleConfig::default());
    assert_eq!(c.kind, BetaScheduleKind::Linear);
    assert_eq!(c.timesteps, 1000);

    let c: ScheduleConfig = serde_json::from_str(r#"{"kind":"squaredcos_cap_v2"}"#).unwrap();
    assert_eq!(c.kind, BetaScheduleKind::Cosine);
    assert_eq!("squaredcos_cap_v2".parse(), Ok(BetaScheduleKind::Cosine));
    for kind in BetaScheduleKind::ALL {
        assert_eq!(kind.name().parse(), Ok(kind));
        let json = format!(r#"{{"kind":"{}","timesteps":10}}"#, kind.name());
        let c: ScheduleConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(c, ScheduleConfig::new(kind, 10));
        // Round trip through serde.
        let back: ScheduleConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    assert_eq!(
        invalid_key("squaredcos".parse::<BetaScheduleKind>()),
        "schedule.kind"
    );

    for bad in [
        r#"{"kind":"cosine","cosine_S":0.1}"#,
        r#"{"beta_star":0.001}"#,
        r#"{"steps":10}"#,
        r#"{"kind":"quadratic"}"#,
    ] {
        let err = serde_json::from_str::<ScheduleConfig>(bad);
        assert!(err.is_err(), "{bad} parsed: {err:?}");
    }
    let msg = serde_json::from_str::<ScheduleConfig>(r#"{"beta_star":0.001}"#)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("beta_star"), "{msg}");

    let c: ScheduleConfig = serde_json::from_str(
        r#"{"kind":"scaled_linear","beta_end":0.02,"zero_terminal_snr":true}"#,
    )
    .unwrap();
    assert_eq!(c.beta_range(), (0.00085, 0.02));
    assert!(c.zero_terminal_snr);
}
