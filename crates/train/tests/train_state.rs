//! Optimizer, LR schedule, clipping, EMA and checkpoints: the numbers against PyTorch and closed
//! forms, the checkpoint directory's crash and disk-error behaviour, and exact resume (N steps +
//! checkpoint + reload + N steps == 2N steps, bit for bit, on CPU).

use std::path::{Path, PathBuf};

use difflab_models::{MlpConfig, MlpDenoiser};
use difflab_pipeline::checkpoint::{
    CheckpointContents, CheckpointDir, CheckpointError, load_weights, read_state,
};
use difflab_train::optim::{
    AdamW, Ema, EmaConfig, LrConfig, LrSchedule, OptimizerConfig, OptimizerKind, clip_grad_norm,
    load_optimizer,
};
use tch::{Device, Kind, Tensor, nn, nn::VarStore};

// ---------------------------------------------------------------- helpers

/// libtorch's default generator is process-wide and tests run on parallel threads: every test
/// that draws random numbers holds this for its whole run, so seeded draws stay reproducible.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("difflab-train-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The raw bits of a float tensor (f32 or f64 widened to u64).
fn bits(t: &Tensor) -> Vec<u64> {
    let flat = t.detach().flatten(0, -1);
    match t.kind() {
        Kind::Float => Vec::<f32>::try_from(&flat)
            .unwrap()
            .into_iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        Kind::Double => Vec::<f64>::try_from(&flat)
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        Kind::Int64 => Vec::<i64>::try_from(&flat)
            .unwrap()
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        k => panic!("bits: unsupported kind {k:?}"),
    }
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    bits(t).into_iter().map(|b| b as u32).collect()
}

/// Every variable of `vs` as (name, bits), sorted.
fn store_bits(vs: &VarStore) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, bits(&t)))
        .collect();
    out.sort();
    out
}

/// Assert two (name, bits) lists are identical, naming the first tensor that differs.
fn assert_same(a: &[(String, Vec<u64>)], b: &[(String, Vec<u64>)], what: &str) {
    let names = |v: &[(String, Vec<u64>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}: tensor names");
    for ((name, x), (_, y)) in a.iter().zip(b) {
        if let Some(i) = x.iter().zip(y).position(|(p, q)| p != q) {
            panic!(
                "{what}: `{name}` differs first at element {i} ({:#x} vs {:#x})",
                x[i], y[i]
            );
        }
        assert_eq!(x.len(), y.len(), "{what}: `{name}` length");
    }
}

fn state_bits(opt: &AdamW) -> Vec<(String, Vec<u64>)> {
    opt.state_tensors()
        .into_iter()
        .map(|(name, t)| (name, bits(&t)))
        .collect()
}

/// A store with one trainable variable `p` holding `values`, of dtype `kind`.
fn single(values: &[f64], kind: Kind) -> (VarStore, Tensor) {
    let vs = VarStore::new(Device::Cpu);
    let init = Tensor::from_slice(values).to_kind(kind);
    let p = vs.root().add("p", init, true);
    (vs, p)
}

/// Backward of `sum(p·g)`, which sets `p.grad = g` exactly.
fn set_grad(p: &Tensor, g: &[f64]) {
    let g = Tensor::from_slice(g).to_kind(p.kind());
    (p * g).sum(p.kind()).backward();
}

fn f32_from_bits(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|b| f32::from_bits(*b)).collect()
}

// ---------------------------------------------------------------- AdamW

const P0: [f64; 4] = [0.5, -1.5, 2.0, 0.25];
const GRADS: [[f64; 4]; 3] = [
    [0.1, -0.2, 0.3, 0.0],
    [0.35, 0.05, -1.25, 0.0],
    [-0.7, 0.4, 2.5, 1e-3],
];

fn three_torch_steps(kind: OptimizerKind) -> (Tensor, AdamW) {
    let (vs, p) = single(&P0, Kind::Float);
    let config = OptimizerConfig {
        kind,
        lr: 0.01,
        weight_decay: 0.1,
        ..OptimizerConfig::default()
    };
    let mut opt = AdamW::new(&vs, &config);
    for g in GRADS {
        opt.zero_grad();
        set_grad(&p, &g);
        opt.step(0.01);
    }
    (p, opt)
}

fn moment(opt: &AdamW, name: &str) -> Tensor {
    opt.state_tensors()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no state tensor {name}"))
        .1
}

/// Reference: PyTorch 2.13, `torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8,
/// weight_decay=0.1, foreach=False)` (the CPU default), p = [0.5, -1.5, 2.0, 0.25], three steps
/// with `p.grad` = GRADS[k]; values are the f32 bit patterns PyTorch printed.
#[test]
fn adamw_matches_pytorch_bit_for_bit() {
    let (p, opt) = three_torch_steps(OptimizerKind::AdamW);
    let want_p = [0x3ef6c84d, 0xbfbe0fa8, 0x3ffe35c8, 0x3e78b103];
    let want_m = [0xbcf9096a, 0x3ce7d567, 0x3e25aee7, 0x38d1b718];
    let want_v = [0x3a2325b5, 0x3954400c, 0x3c01722e, 0x30897061];
    assert_eq!(
        f32_bits(&p),
        want_p,
        "p = {:?}, torch {:?}",
        Vec::<f32>::try_from(&p.detach()).unwrap(),
        f32_from_bits(&want_p)
    );
    assert_eq!(f32_bits(&moment(&opt, "exp_avg.p")), want_m);
    assert_eq!(f32_bits(&moment(&opt, "exp_avg_sq.p")), want_v);
    assert_eq!(opt.steps_taken(), 3);
}

/// Reference: PyTorch 2.13 `torch.optim.Adam` (L2 weight decay 0.1), same setting.
#[test]
fn adam_with_l2_matches_pytorch_bit_for_bit() {
    let (p, opt) = three_torch_steps(OptimizerKind::Adam);
    let want_p = [0x3ef6d38b, 0xbfbd697c, 0x3ffe9c87, 0x3e614f2e];
    let want_m = [0xbc8c5af8, 0xbc45d756, 0x3e5d075f, 0x3bd7c80e];
    let want_v = [0x3a1efe5d, 0x394cf800, 0x3c0d8d69, 0x35ee44a6];
    assert_eq!(
        f32_bits(&p),
        want_p,
        "p = {:?}, torch {:?}",
        Vec::<f32>::try_from(&p.detach()).unwrap(),
        f32_from_bits(&want_p)
    );
    assert_eq!(f32_bits(&moment(&opt, "exp_avg.p")), want_m);
    assert_eq!(f32_bits(&moment(&opt, "exp_avg_sq.p")), want_v);
}

/// Closed form, by hand: with a constant gradient g the bias-corrected moments are exactly
/// m̂ = g and v̂ = g², so each AdamW step is θ ← θ(1 − lr·λ) − lr·g/(|g| + ε).
#[test]
fn adamw_closed_form_constant_gradient() {
    let g = [0.3, -2.0, 1e-4, 0.0];
    let (lr, wd, eps) = (0.05, 0.2, 1e-8);
    let (vs, p) = single(&P0, Kind::Double);
    let config = OptimizerConfig {
        lr,
        weight_decay: wd,
        eps,
        ..OptimizerConfig::default()
    };
    let mut opt = AdamW::new(&vs, &config);
    let mut want = P0;
    for _ in 0..3 {
        opt.zero_grad();
        set_grad(&p, &g);
        opt.step(lr);
        for (w, gi) in want.iter_mut().zip(g) {
            *w = *w * (1.0 - lr * wd) - lr * gi / (gi.abs() + eps);
        }
    }
    let got = Vec::<f64>::try_from(&p.detach()).unwrap();
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-12, "element {i}: {a} vs closed form {b}");
    }
    // The step counts are exported.
    assert_eq!(bits(&moment(&opt, "step")), [3]);
    assert_eq!(bits(&moment(&opt, "step.p")), [3]);
}

#[test]
fn adamw_equals_adam_without_weight_decay() {
    let _rng = rng_lock();
    let run = |kind| {
        tch::manual_seed(3);
        let (vs, p) = single(&[0.0; 16], Kind::Float);
        tch::no_grad(|| {
            p.shallow_clone()
                .copy_(&Tensor::randn([16], (Kind::Float, Device::Cpu)))
        });
        let config = OptimizerConfig {
            kind,
            ..OptimizerConfig::default()
        };
        let mut opt = AdamW::new(&vs, &config);
        for step in 0..5 {
            tch::manual_seed(100 + step);
            let target = Tensor::randn([16], (Kind::Float, Device::Cpu));
            (&p - target).square().sum(Kind::Float).backward();
            opt.step(1e-2);
            opt.zero_grad();
        }
        (bits(&p), state_bits(&opt))
    };
    assert_eq!(run(OptimizerKind::AdamW), run(OptimizerKind::Adam));
}

#[test]
fn adamw_skips_variables_without_gradient() {
    let vs = VarStore::new(Device::Cpu);
    let a = vs.root().var_copy("a", &Tensor::from_slice(&[1.0f32, 2.0]));
    let b = vs.root().var_copy("b", &Tensor::from_slice(&[3.0f32]));
    let _frozen = vs
        .root()
        .add("frozen", Tensor::from_slice(&[5.0f32]), false);
    let mut opt = AdamW::new(&vs, &OptimizerConfig::default());
    assert_eq!(
        opt.names().collect::<Vec<_>>(),
        ["a", "b"],
        "trainable only, sorted"
    );
    let before = bits(&b);
    (&a * 2.0).sum(Kind::Float).backward();
    opt.step(0.1);
    assert_eq!(bits(&b), before, "b has no gradient: untouched");
    assert_ne!(bits(&a), bits(&Tensor::from_slice(&[1.0f32, 2.0])));
    assert_eq!(bits(&moment(&opt, "step.a")), [1]);
    assert_eq!(bits(&moment(&opt, "step.b")), [0]);
    assert_eq!(opt.steps_taken(), 1);
}

#[test]
fn adamw_state_load_is_strict_and_names_the_tensor() {
    let (vs, p) = single(&P0, Kind::Float);
    let mut opt = AdamW::new(&vs, &OptimizerConfig::default());
    set_grad(&p, &GRADS[0]);
    opt.step(0.1);
    let state: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["exp_avg.p", "exp_avg_sq.p", "step", "step.p"]);

    let mut fresh = AdamW::new(&vs, &OptimizerConfig::default());
    fresh.load_state_tensors(&state).unwrap();
    assert_same(&state_bits(&fresh), &state_bits(&opt), "optimizer");
    assert_eq!(fresh.steps_taken(), 1);

    let err = |named: &[(String, Tensor)]| {
        let mut o = AdamW::new(&vs, &OptimizerConfig::default());
        let e = o.load_state_tensors(named).unwrap_err();
        assert_eq!(o.steps_taken(), 0, "unchanged on error");
        e.to_string()
    };
    let without: Vec<_> = state
        .iter()
        .filter(|(n, _)| n != "exp_avg_sq.p")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    assert!(err(&without).contains("exp_avg_sq.p"), "{}", err(&without));
    let mut reshaped: Vec<_> = state
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    reshaped[0].1 = Tensor::zeros([5], (Kind::Float, Device::Cpu));
    let e = err(&reshaped);
    assert!(e.contains(&reshaped[0].0) && e.contains("[5]"), "{e}");
    let mut extra: Vec<_> = state
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    extra.push((
        "exp_avg.q".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    assert!(err(&extra).contains("exp_avg.q"), "{}", err(&extra));
}

// ---------------------------------------------------------------- LR schedules

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
}

#[test]
fn lr_constant_with_warmup() {
    let c = LrConfig {
        warmup_steps: 10,
        ..LrConfig::default()
    };
    assert_eq!(c.lr_at(1e-3, 0, 100), 0.0);
    assert!(close(c.lr_at(1e-3, 5, 100), 5e-4));
    assert_eq!(c.lr_at(1e-3, 10, 100), 1e-3, "warmup end = base");
    assert_eq!(c.lr_at(1e-3, 99, 100), 1e-3);
    let none = LrConfig::default();
    assert_eq!(
        none.lr_at(1e-3, 0, 100),
        1e-3,
        "no warmup: base from step 0"
    );
}

#[test]
fn lr_cosine_key_steps() {
    let c = LrConfig {
        warmup_steps: 100,
        schedule: LrSchedule::Cosine,
        ..LrConfig::default()
    };
    let base = 2e-4;
    assert!(close(c.lr_at(base, 50, 1100), 1e-4), "mid-warmup");
    assert_eq!(c.lr_at(base, 100, 1100), base, "warmup end");
    assert!(
        close(c.lr_at(base, 600, 1100), base / 2.0),
        "mid-cosine = half"
    );
    assert_eq!(c.lr_at(base, 1100, 1100), 0.0, "final = min");
    assert_eq!(c.lr_at(base, 5000, 1100), 0.0, "stays at the floor");
    // Quarter point: ½(1 + cos(π/4)).
    let quarter = base * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
    assert!(close(c.lr_at(base, 350, 1100), quarter));

    let floor = LrConfig {
        min_lr_ratio: 0.1,
        ..c.clone()
    };
    assert!(
        close(floor.lr_at(base, 600, 1100), base * 0.55),
        "mid = (1 + r)/2"
    );
    assert!(
        close(floor.lr_at(base, 1100, 1100), base * 0.1),
        "final = r·base"
    );
    assert!(floor.lr_at(base, 1099, 1100) > base * 0.1);
}

#[test]
fn lr_step_decay() {
    let c = LrConfig {
        warmup_steps: 5,
        schedule: LrSchedule::Step,
        step_size: 10,
        gamma: 0.5,
        ..LrConfig::default()
    };
    assert_eq!(c.lr_at(1.0, 5, 100), 1.0);
    assert_eq!(c.lr_at(1.0, 14, 100), 1.0);
    assert_eq!(c.lr_at(1.0, 15, 100), 0.5);
    assert_eq!(c.lr_at(1.0, 35, 100), 0.125);
    assert!(c.validate().is_ok());
    let bad = LrConfig { step_size: 0, ..c };
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("lr_schedule.step_size")
    );
}

#[test]
fn configs_default_from_empty_and_reject_unknown_keys() {
    let opt: OptimizerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(opt, OptimizerConfig::default());
    assert_eq!(opt.kind, OptimizerKind::AdamW);
    assert_eq!(
        (opt.lr, opt.betas, opt.eps, opt.weight_decay),
        (2e-4, [0.9, 0.999], 1e-8, 0.0)
    );
    let adam: OptimizerConfig = serde_json::from_str(r#"{"kind": "adam", "lr": 1e-3}"#).unwrap();
    assert_eq!(adam.kind, OptimizerKind::Adam);
    assert!(serde_json::from_str::<OptimizerConfig>(r#"{"lr_rate": 1}"#).is_err());
    let lr: LrConfig =
        serde_json::from_str(r#"{"schedule": "cosine", "warmup_steps": 500}"#).unwrap();
    assert_eq!(lr.schedule, LrSchedule::Cosine);
    assert_eq!(lr.min_lr_ratio, 0.0);
    let ema: EmaConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(ema, EmaConfig::default());
    assert_eq!(
        (ema.decay, ema.warmup, ema.inv_gamma, ema.power),
        (0.9999, true, 1.0, 2.0 / 3.0)
    );
    assert!(serde_json::from_str::<EmaConfig>(r#"{"beta": 0.9}"#).is_err());
    assert!(OptimizerConfig::default().validate().is_ok());
    assert!(EmaConfig::default().validate().is_ok());
    let bad = OptimizerConfig {
        betas: [0.9, 1.0],
        ..OptimizerConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("optimizer.betas[1]"));
}

// ---------------------------------------------------------------- clipping

#[test]
fn clip_grad_norm_matches_pytorch() {
    let vs = VarStore::new(Device::Cpu);
    let a = vs.root().zeros("a", &[3, 4]);
    let b = vs.root().zeros("b", &[5]);
    let mut ga = [0.0; 12];
    ga[0] = 3.0;
    let mut gb = [0.0; 5];
    gb[0] = 4.0;
    set_grad(&a.flatten(0, -1), &ga);
    set_grad(&b, &gb);
    // Under the limit: the norm, nothing changed.
    assert_eq!(clip_grad_norm(&vs, 10.0), 5.0);
    assert_eq!(
        bits(&a.grad().flatten(0, -1))[0],
        u64::from(3.0f32.to_bits())
    );
    // Off (0 or inf): the norm, nothing changed.
    assert_eq!(clip_grad_norm(&vs, 0.0), 5.0);
    assert_eq!(clip_grad_norm(&vs, f64::INFINITY), 5.0);
    assert_eq!(bits(&b.grad())[0], u64::from(4.0f32.to_bits()));
    // Over: scaled by 1/(5 + 1e-6); PyTorch 2.13's clip_grad_norm_ gives these bits.
    assert_eq!(clip_grad_norm(&vs, 1.0), 5.0);
    assert_eq!(f32_bits(&a.grad().flatten(0, -1))[0], 0x3f199998);
    assert_eq!(f32_bits(&b.grad())[0], 0x3f4cccca);
    assert!(
        (clip_grad_norm(&vs, 1.0) - 1.0).abs() < 1e-6,
        "now at the limit"
    );
}

#[test]
fn clip_grad_norm_returns_non_finite_norm_untouched() {
    let (vs, p) = single(&[1.0, 2.0], Kind::Float);
    set_grad(&p, &[f64::NAN, 1.0]);
    assert!(clip_grad_norm(&vs, 1.0).is_nan());
    assert_eq!(f32_bits(&p.grad())[1], 1.0f32.to_bits(), "not clipped");
    let (vs, p) = single(&[1.0, 2.0], Kind::Float);
    set_grad(&p, &[f64::INFINITY, 1.0]);
    assert_eq!(clip_grad_norm(&vs, 1.0), f64::INFINITY);
    let (empty, _) = (VarStore::new(Device::Cpu), ());
    assert_eq!(clip_grad_norm(&empty, 1.0), 0.0);
}

// ---------------------------------------------------------------- EMA

#[test]
fn ema_decay_follows_the_warmup_formula() {
    let model = VarStore::new(Device::Cpu);
    let shadow = VarStore::new(Device::Cpu);
    let config = EmaConfig::default();
    let ema = Ema::new(&model, &shadow, &config).unwrap();
    assert_eq!(ema.decay_at(0), 0.0);
    assert_eq!(
        ema.decay_at(1),
        0.0,
        "first update copies (diffusers: step − 1 = 0)"
    );
    for step in [2u64, 10, 1000, 100_000] {
        let e = (step - 1) as f64;
        let want = (1.0 - (1.0 + e).powf(-2.0 / 3.0)).min(0.9999);
        assert!(close(ema.decay_at(step), want), "step {step}");
    }
    assert!(close(ema.decay_at(9), 1.0 - 9f64.powf(-2.0 / 3.0)));
    assert_eq!(ema.decay_at(10_000_000), 0.9999, "clamped to decay");

    let custom = EmaConfig {
        inv_gamma: 10.0,
        power: 0.75,
        min_decay: 0.5,
        start_step: 100,
        ..EmaConfig::default()
    };
    let ema = Ema::new(&model, &shadow, &custom).unwrap();
    assert_eq!(ema.decay_at(50), 0.0, "before start_step: copy");
    assert_eq!(ema.decay_at(101), 0.0);
    assert_eq!(
        ema.decay_at(102),
        0.5,
        "1 − 1.1^−0.75 ≈ 0.069 clamped up to min_decay"
    );
    let want = 1.0 - (1.0 + 400.0 / 10.0f64).powf(-0.75);
    assert!(close(ema.decay_at(501), want));

    let plain = EmaConfig {
        warmup: false,
        decay: 0.99,
        ..EmaConfig::default()
    };
    let ema = Ema::new(&model, &shadow, &plain).unwrap();
    assert_eq!(ema.decay_at(1), 0.0);
    assert_eq!(ema.decay_at(2), 0.99);
    assert_eq!(ema.decay_at(1_000), 0.99);
}

#[test]
fn ema_update_math_start_and_every() {
    let (model, p) = single(&[1.0, -2.0], Kind::Double);
    let (mut shadow, s) = single(&[7.0, 7.0], Kind::Double);
    let config = EmaConfig {
        warmup: false,
        decay: 0.9,
        start_step: 2,
        update_every: 2,
        ..EmaConfig::default()
    };
    let mut ema = Ema::new(&model, &shadow, &config).unwrap();
    let value = |t: &Tensor| Vec::<f64>::try_from(&t.detach()).unwrap();
    assert_eq!(value(&s), [1.0, -2.0], "new copies the weights");
    let set = |v: [f64; 2]| tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&v)));

    // The weight an optimizer's fused pass averages with: only at steps `update` averages.
    let weights: Vec<Option<f64>> = (1..=6).map(|step| ema.averaging_weight(step)).collect();
    let w = Some(1.0 - 0.9);
    assert_eq!(weights, [None, None, None, w, None, w]);
    // With every trainable variable averaged elsewhere, `update_except` leaves the EMA alone
    // at such a step, and copies as `update` does at the others.
    set([5.0, 5.0]);
    ema.update_except(&model, &mut shadow, 4, &|_| true);
    assert_eq!(value(&s), [1.0, -2.0], "averaged elsewhere");
    ema.update_except(&model, &mut shadow, 1, &|_| true);
    assert_eq!(value(&s), [5.0, 5.0], "step ≤ start_step: still a copy");

    set([2.0, 0.0]);
    ema.update(&model, &mut shadow, 1);
    assert_eq!(value(&s), [2.0, 0.0], "step ≤ start_step: copy");
    set([4.0, 1.0]);
    ema.update(&model, &mut shadow, 3);
    assert_eq!(value(&s), [2.0, 0.0], "step 3: (3 − 2) % 2 ≠ 0, skipped");
    ema.update(&model, &mut shadow, 4);
    // decay_at(4) = 0.9 (e = 1 > 0, no warmup): 0.9·2 + 0.1·4 = 2.2; 0.9·0 + 0.1·1 = 0.1.
    let got = value(&s);
    assert!(
        (got[0] - 2.2).abs() < 1e-15 && (got[1] - 0.1).abs() < 1e-15,
        "{got:?}"
    );

    let other = VarStore::new(Device::Cpu);
    let _ = other
        .root()
        .var_copy("q", &Tensor::from_slice(&[0.0f64, 0.0]));
    let e = Ema::new(&model, &other, &config).err().unwrap().to_string();
    assert!(e.contains('p'), "{e}");
}

// ---------------------------------------------------------------- checkpoints

fn tiny_model(seed: i64) -> (VarStore, MlpDenoiser) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let config = MlpConfig {
        data_dim: 2,
        hidden: 16,
        layers: 2,
        ..MlpConfig::default()
    };
    let model = MlpDenoiser::new(&vs.root(), &config).unwrap();
    (vs, model)
}

/// A model, an EMA copy and an optimizer with one step's moments.
fn trained_bits() -> (VarStore, VarStore, AdamW) {
    let (vs, model) = tiny_model(1);
    let (ema_vs, _ema_model) = tiny_model(2);
    let mut opt = AdamW::new(&vs, &OptimizerConfig::default());
    let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[1i64, 10, 100, 999]);
    model.forward(&x, &t).square().mean(Kind::Float).backward();
    opt.step(1e-3);
    (vs, ema_vs, opt)
}

fn write_step(
    dir: &CheckpointDir,
    step: u64,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let (vs, ema_vs, opt) = trained_bits();
    dir.write(
        &CheckpointContents {
            step,
            model: &vs,
            ema: Some(&ema_vs),
            optimizer: opt.state_tensors(),
            state: serde_json::json!({ "cursor": step * 10 }),
        },
        keep_last,
    )
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    let _rng = rng_lock();
    let scratch = Scratch::new("roundtrip");
    let dir = CheckpointDir::new(scratch.path().join("checkpoints"));
    let (vs, ema_vs, opt) = trained_bits();
    let written = dir
        .write(
            &CheckpointContents {
                step: 7,
                model: &vs,
                ema: Some(&ema_vs),
                optimizer: opt.state_tensors(),
                state: serde_json::json!({ "cursor": 123, "rng": "per-step" }),
            },
            3,
        )
        .unwrap();
    assert_eq!(written, dir.root().join("step-7"));
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(written.join(f).is_file(), "{f}");
    }
    let state = read_state(&written).unwrap();
    assert_eq!(state["step"], 7);
    assert_eq!(state["cursor"], 123);
    assert_eq!(state["rng"], "per-step");

    let (mut vs2, _) = tiny_model(50);
    let (mut ema2, _) = tiny_model(51);
    assert_ne!(store_bits(&vs2), store_bits(&vs));
    load_weights(&mut vs2, &written.join("model.safetensors")).unwrap();
    load_weights(&mut ema2, &written.join("ema.safetensors")).unwrap();
    assert_same(&store_bits(&vs2), &store_bits(&vs), "model");
    assert_same(&store_bits(&ema2), &store_bits(&ema_vs), "ema");
    let mut opt2 = AdamW::new(&vs2, &OptimizerConfig::default());
    load_optimizer(&mut opt2, &written).unwrap();
    assert_same(&state_bits(&opt2), &state_bits(&opt), "optimizer");
    assert_eq!(opt2.steps_taken(), 1);

    // The files are standard safetensors: tch's own reader agrees.
    let named = Tensor::read_safetensors(written.join("model.safetensors")).unwrap();
    assert_eq!(named.len(), vs.variables().len());
    for (name, t) in named {
        assert_eq!(bits(&t), bits(&vs.variables()[&name]), "{name}");
    }
}

#[test]
fn latest_points_to_newest_and_keep_last_honours_keep() {
    let _rng = rng_lock();
    let scratch = Scratch::new("prune");
    let dir = CheckpointDir::new(scratch.path().join("checkpoints"));
    assert_eq!(dir.latest().unwrap(), None);
    assert!(dir.list().unwrap().is_empty());
    for step in [100, 200] {
        write_step(&dir, step, 2).unwrap();
        assert_eq!(dir.latest().unwrap(), Some(dir.step_dir(step)));
    }
    std::fs::write(dir.step_dir(100).join("KEEP"), "").unwrap();
    for step in [300, 400, 500] {
        write_step(&dir, step, 2).unwrap();
        assert_eq!(dir.latest().unwrap(), Some(dir.step_dir(step)));
    }
    let steps: Vec<u64> = dir.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        steps,
        [100, 400, 500],
        "KEEP survives; newest 2 others kept"
    );
    assert_eq!(
        std::fs::read_to_string(dir.root().join("latest"))
            .unwrap()
            .trim(),
        "step-500"
    );
    // Writing an older step (e.g. after resuming an earlier checkpoint) keeps it and moves
    // `latest` to it.
    write_step(&dir, 450, 2).unwrap();
    assert_eq!(dir.latest().unwrap(), Some(dir.step_dir(450)));
    let steps: Vec<u64> = dir.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [100, 450, 500]);
    // Rewriting an existing step replaces it.
    write_step(&dir, 500, 2).unwrap();
    assert_eq!(dir.latest().unwrap(), Some(dir.step_dir(500)));
    let leftovers: Vec<String> = std::fs::read_dir(dir.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn non_finite_tensor_is_refused_and_previous_checkpoint_kept() {
    let _rng = rng_lock();
    let scratch = Scratch::new("nan");
    let dir = CheckpointDir::new(scratch.path().join("checkpoints"));
    let good = write_step(&dir, 10, 3).unwrap();
    let before = std::fs::read(good.join("model.safetensors")).unwrap();

    let (vs, ema_vs, opt) = trained_bits();
    let victim = vs.variables()["input.weight"].shallow_clone();
    tch::no_grad(|| {
        let _ = victim.get(0).get(0).fill_(f64::NAN);
    });
    let err = dir
        .write(
            &CheckpointContents {
                step: 20,
                model: &vs,
                ema: Some(&ema_vs),
                optimizer: opt.state_tensors(),
                state: serde_json::Value::Null,
            },
            3,
        )
        .unwrap_err();
    assert!(matches!(err, CheckpointError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("model:input.weight"), "{err}");
    assert_eq!(dir.latest().unwrap(), Some(good.clone()));
    assert!(!dir.step_dir(20).exists());
    assert_eq!(
        std::fs::read(good.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_dir(dir.root()).unwrap().count(),
        2,
        "step-10 and latest only"
    );

    // An infinite optimizer moment is refused too.
    let (vs, ema_vs, opt) = trained_bits();
    let (_, mut m) = opt
        .state_tensors()
        .into_iter()
        .find(|(n, _)| n.starts_with("exp_avg_sq."))
        .unwrap();
    tch::no_grad(|| {
        let _ = m.fill_(f64::INFINITY);
    });
    let err = dir
        .write(
            &CheckpointContents {
                step: 30,
                model: &vs,
                ema: Some(&ema_vs),
                optimizer: opt.state_tensors(),
                state: serde_json::Value::Null,
            },
            3,
        )
        .unwrap_err();
    assert!(err.to_string().contains("optimizer:exp_avg_sq."), "{err}");
    assert_eq!(dir.latest().unwrap(), Some(good));
}

#[test]
fn load_with_mismatched_shapes_names_the_tensor() {
    let _rng = rng_lock();
    let scratch = Scratch::new("mismatch");
    let dir = CheckpointDir::new(scratch.path().join("checkpoints"));
    let written = write_step(&dir, 1, 3).unwrap();
    tch::manual_seed(0);
    let mut other = VarStore::new(Device::Cpu);
    let _wider = MlpDenoiser::new(
        &other.root(),
        &MlpConfig {
            data_dim: 2,
            hidden: 24,
            layers: 2,
            ..MlpConfig::default()
        },
    )
    .unwrap();
    let before = store_bits(&other);
    let err = load_weights(&mut other, &written.join("model.safetensors")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CheckpointError::Mismatch { .. }), "{text}");
    assert!(
        text.contains("model.safetensors") && text.contains("another model config"),
        "{text}"
    );
    let CheckpointError::Mismatch { tensor, .. } = &err else {
        unreachable!()
    };
    assert!(
        other.variables().contains_key(tensor),
        "names a real tensor: {text}"
    );
    assert_eq!(store_bits(&other), before, "unchanged on error");

    let mut opt = AdamW::new(&other, &OptimizerConfig::default());
    let err = load_optimizer(&mut opt, &written).unwrap_err().to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("exp_avg"),
        "{err}"
    );

    let err = load_weights(&mut other, &written.join("nope.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Missing { .. }), "{err}");
    std::fs::write(written.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = load_weights(&mut other, &written.join("model.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
}

#[test]
fn unwritable_directory_is_an_error_naming_the_path() {
    let _rng = rng_lock();
    let scratch = Scratch::new("unwritable");
    // A regular file where the directory should be: fails even for root.
    let blocker = scratch.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let dir = CheckpointDir::new(blocker.join("checkpoints"));
    let err = write_step(&dir, 1, 3).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&blocker.display().to_string()),
        "{err}"
    );
}

#[test]
fn leftover_tmp_dirs_are_ignored_and_bad_latest_is_an_error() {
    let _rng = rng_lock();
    let scratch = Scratch::new("leftover");
    let root = scratch.path().join("checkpoints");
    let dir = CheckpointDir::new(&root);
    write_step(&dir, 5, 3).unwrap();
    // A crashed write of a newer step, a stray file and a stray latest temp file.
    std::fs::create_dir_all(root.join("step-9.tmp-12345")).unwrap();
    std::fs::write(root.join("step-9.tmp-12345/model.safetensors"), b"half").unwrap();
    std::fs::write(root.join("latest.tmp-12345"), "step-9").unwrap();
    std::fs::create_dir_all(root.join("step-07")).unwrap();
    std::fs::write(root.join("step-8"), "a file, not a dir").unwrap();
    assert_eq!(dir.list().unwrap(), [(5, root.join("step-5"))]);
    assert_eq!(dir.latest().unwrap(), Some(root.join("step-5")));
    // Pruning leaves them alone too.
    write_step(&dir, 6, 1).unwrap();
    assert!(root.join("step-9.tmp-12345").exists());
    assert_eq!(dir.list().unwrap(), [(6, root.join("step-6"))]);

    // No `latest` (crash before the first pointer was written): the newest complete dir.
    std::fs::remove_file(root.join("latest")).unwrap();
    assert_eq!(dir.latest().unwrap(), Some(root.join("step-6")));
    // `latest` naming a missing directory is an error naming it.
    std::fs::write(root.join("latest"), "step-99\n").unwrap();
    let err = dir.latest().unwrap_err().to_string();
    assert!(err.contains("step-99"), "{err}");
    std::fs::write(root.join("latest"), "../../etc").unwrap();
    assert!(matches!(dir.latest(), Err(CheckpointError::Corrupt { .. })));
    // A state.json without a step is corrupt.
    std::fs::write(root.join("step-6/state.json"), "{\"cursor\": 1}").unwrap();
    assert!(matches!(
        read_state(&root.join("step-6")),
        Err(CheckpointError::Corrupt { .. })
    ));
}

// ---------------------------------------------------------------- exact resume

const TOTAL: u64 = 12;
const BATCH: i64 = 16;

fn lr_config() -> LrConfig {
    LrConfig {
        warmup_steps: 3,
        schedule: LrSchedule::Cosine,
        min_lr_ratio: 0.1,
        ..LrConfig::default()
    }
}

fn ema_config() -> EmaConfig {
    EmaConfig {
        start_step: 2,
        update_every: 2,
        ..EmaConfig::default()
    }
}

fn opt_config() -> OptimizerConfig {
    OptimizerConfig {
        lr: 5e-3,
        weight_decay: 0.01,
        ..OptimizerConfig::default()
    }
}

struct Run {
    vs: VarStore,
    ema_vs: VarStore,
    model: MlpDenoiser,
    opt: AdamW,
    ema: Ema,
    clipped: usize,
}

impl Run {
    /// A fresh run whose initial weights come from `seed`.
    fn new(seed: i64) -> Self {
        let (vs, model) = tiny_model(seed);
        let (ema_vs, _ema_model) = tiny_model(seed + 1);
        let ema = Ema::new(&vs, &ema_vs, &ema_config()).unwrap();
        let opt = AdamW::new(&vs, &opt_config());
        Self {
            vs,
            ema_vs,
            model,
            opt,
            ema,
            clipped: 0,
        }
    }

    /// Optimizer steps `from..to` (0-based), every random draw re-seeded from the step.
    fn train(&mut self, from: u64, to: u64) {
        for step in from..to {
            let lr = lr_config().lr_at(opt_config().lr, step, TOTAL);
            tch::manual_seed(1_000 + step as i64);
            let x0 = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
            let noise = Tensor::randn([BATCH, 2], (Kind::Float, Device::Cpu));
            let t = Tensor::randint(1000, [BATCH], (Kind::Int64, Device::Cpu));
            let a = (&t.to_kind(Kind::Float) / 1000.0).unsqueeze(1);
            let xt = &x0 * (a.neg() + 1.0).sqrt() + &noise * a.sqrt();
            let loss = (self.model.forward(&xt, &t) - &noise)
                .square()
                .mean(Kind::Float);
            loss.backward();
            if clip_grad_norm(&self.vs, 0.5) > 0.5 {
                self.clipped += 1;
            }
            self.opt.step(lr);
            self.opt.zero_grad();
            self.ema.update(&self.vs, &mut self.ema_vs, step + 1);
        }
    }
}

#[test]
fn resume_from_checkpoint_is_bit_identical_to_uninterrupted_training() {
    let _rng = rng_lock();
    let half = TOTAL / 2;
    let mut straight = Run::new(11);
    straight.train(0, TOTAL);
    assert!(straight.clipped > 0, "the test should exercise clipping");
    assert_ne!(
        store_bits(&straight.vs),
        store_bits(&straight.ema_vs),
        "the EMA should differ from the weights"
    );

    let scratch = Scratch::new("resume");
    let dir = CheckpointDir::new(scratch.path().join("checkpoints"));
    {
        let mut first = Run::new(11);
        first.train(0, half);
        dir.write(
            &CheckpointContents {
                step: half,
                model: &first.vs,
                ema: Some(&first.ema_vs),
                optimizer: first.opt.state_tensors(),
                state: serde_json::json!({ "data_cursor": half * BATCH as u64 }),
            },
            2,
        )
        .unwrap();
    }

    // Everything rebuilt from other seeds, then restored from disk.
    let mut resumed = Run::new(77);
    let latest = dir.latest().unwrap().unwrap();
    let state = read_state(&latest).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert_eq!(step, half);
    load_weights(&mut resumed.vs, &latest.join("model.safetensors")).unwrap();
    load_weights(&mut resumed.ema_vs, &latest.join("ema.safetensors")).unwrap();
    load_optimizer(&mut resumed.opt, &latest).unwrap();
    assert_eq!(resumed.opt.steps_taken(), half as i64);
    resumed.train(step, TOTAL);

    assert_same(
        &store_bits(&resumed.vs),
        &store_bits(&straight.vs),
        "model weights",
    );
    assert_same(
        &store_bits(&resumed.ema_vs),
        &store_bits(&straight.ema_vs),
        "EMA weights",
    );
    assert_same(
        &state_bits(&resumed.opt),
        &state_bits(&straight.opt),
        "optimizer state",
    );
}

/// `nn::linear` models work too (the optimizer is not tied to difflab's models).
#[test]
fn adamw_trains_a_plain_linear_layer() {
    let _rng = rng_lock();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let layer = nn::linear(vs.root() / "fc", 3, 1, Default::default());
    let mut opt = AdamW::new(&vs, &opt_config());
    assert_eq!(opt.names().collect::<Vec<_>>(), ["fc.bias", "fc.weight"]);
    let x = Tensor::randn([64, 3], (Kind::Float, Device::Cpu));
    let y = x.matmul(&Tensor::from_slice(&[1.0f32, -2.0, 0.5]).unsqueeze(1)) + 0.3;
    let loss_at = |opt: &mut AdamW, train: bool| {
        let loss = (nn::Module::forward(&layer, &x) - &y)
            .square()
            .mean(Kind::Float);
        let value = loss.double_value(&[]);
        if train {
            loss.backward();
            opt.step(5e-2);
            opt.zero_grad();
        }
        value
    };
    let start = loss_at(&mut opt, false);
    for _ in 0..200 {
        loss_at(&mut opt, true);
    }
    let end = loss_at(&mut opt, false);
    assert!(end < start * 0.01, "loss {start} → {end}");
}
