//! Fused CPU kernels for the element-wise updates of [`super::AdamW`] and [`super::Ema`]: one
//! pass over each parameter's memory in Rust instead of five to eight libtorch operations, each
//! allocating a temporary and crossing the dispatcher (for a small model those operations cost
//! more than the arithmetic; see docs/performance.md).
//!
//! Every per-element formula repeats, operation for operation and rounding for rounding, the
//! tensor-op sequence it replaces (PyTorch's single-tensor `torch.optim.AdamW`), including the
//! fused multiply-adds of libtorch's vectorised `lerp` and `addcmul` kernels, so the moments
//! agree with the tensor path to the last bit. One operation cannot: libtorch's CPU `sqrt` goes
//! through MKL's vector math library, which is not correctly rounded (about 0.7 % of results
//! are 1 ulp off), while this kernel uses the IEEE square root. The parameters therefore agree
//! to within a few ulp where `√v` differs, and bit for bit elsewhere; `AdamW`'s tests bound
//! both, and check the tensor path against PyTorch to the last bit.
//!
//! The kernels apply to f32 CPU tensors whose elements fill one dense block of memory
//! (contiguous, channels-last, or any other dimension order) laid out alike; anything else
//! (CUDA, f64, bf16, gappy views, mismatched layouts) takes the tensor-op path.

use crate::cpu::{SUM_BLOCK, dense_cpu_f32_layout, has_avx2_fma, is_dense_cpu_f32, squares};
use crate::omp_team::{self, SyncPtr};
use tch::Tensor;

/// Whether every tensor is a dense f32 CPU tensor ([`is_dense_cpu_f32`]) with the sizes and
/// strides of the first, so that the same memory offset holds the same element in each.
fn same_dense_layout(tensors: &[&Tensor]) -> bool {
    let Some(first) = dense_cpu_f32_layout(tensors[0]) else {
        return false;
    };
    tensors[1..]
        .iter()
        .all(|t| dense_cpu_f32_layout(t).as_ref() == Some(&first))
}

/// The memory of `t` as `(start address, element count)`.
fn span(t: &Tensor) -> (usize, usize) {
    (t.data_ptr() as usize, t.numel())
}

/// Whether the element ranges of `tensors` are pairwise disjoint (a kernel writing one while
/// reading another must not see them overlap).
fn disjoint(tensors: &[&Tensor]) -> bool {
    let mut spans: Vec<(usize, usize)> = tensors.iter().map(|t| span(t)).collect();
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].0 + 4 * w[0].1 <= w[1].0)
}

/// The scalars of one Adam/AdamW step, already rounded to f32 as libtorch rounds a double
/// scalar operand of an f32 tensor operation.
#[derive(Clone, Copy, Debug)]
pub struct AdamScalars {
    /// `1 − lr·λ` (AdamW with λ > 0), multiplied into θ first.
    pub decay: Option<f32>,
    /// `λ` (Adam with λ > 0), added to the gradient as `g + θ·λ`.
    pub l2: Option<f32>,
    /// `1 − β₁`, the lerp weight of the first moment.
    pub one_minus_beta1: f32,
    /// `β₂`.
    pub beta2: f32,
    /// `1 − β₂`.
    pub one_minus_beta2: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// `ε`.
    pub eps: f32,
    /// `−lr / (1 − β₁ᵗ)`.
    pub neg_step_size: f32,
}

/// What one fused pass over a parameter does besides its Adam/AdamW update (all of it what
/// the training step does next anyway, done while the elements are in registers instead of
/// in passes of their own over memory).
#[derive(Clone, Copy, Debug)]
pub struct Extras<'a> {
    /// Multiplied into the gradient before it is used (gradient clipping's factor, as
    /// `g·c` in f32, the product clipping in place would store); 1 leaves it.
    pub grad_scale: f32,
    /// Write zeros into the gradient once it is read (the step's `zero_grad`).
    pub zero_grad: bool,
    /// An EMA shadow of the parameter and its weight: `shadow ← lerp(shadow, θ_new, w)`.
    pub ema: Option<(&'a Tensor, f32)>,
}

impl<'a> Extras<'a> {
    /// The Adam update alone.
    pub const NONE: Extras<'static> = Extras {
        grad_scale: 1.0,
        zero_grad: false,
        ema: None,
    };

    /// The same extras without the EMA.
    pub fn no_ema(self) -> Self {
        Self { ema: None, ..self }
    }
}

/// One Adam/AdamW step of one parameter, now, in place: `var`, `exp_avg` and `exp_avg_sq` are
/// written, `grad` is read (and zeroed with [`Extras::zero_grad`]), and an EMA shadow
/// averaged. Returns `false` (touching nothing) unless all the tensors are dense f32 CPU tensors
/// laid out alike ([`same_dense_layout`]) in pairwise disjoint memory.
///
/// Large parameters are split over libtorch's own OpenMP threads ([`omp_team`]), not threads
/// of our own: libtorch's OpenMP workers spin on the other cores between operations, and a
/// spawned thread would compete with them.
pub fn adam_step(
    var: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    s: AdamScalars,
    extras: Extras<'_>,
) -> bool {
    let mut all = vec![var, grad, exp_avg, exp_avg_sq];
    all.extend(extras.ema.map(|(shadow, _)| shadow));
    if !(same_dense_layout(&all) && disjoint(&all)) || grad.requires_grad() {
        return false;
    }
    let n = var.numel();
    let ptr = |t: &Tensor| SyncPtr(t.data_ptr() as *mut f32);
    let (pp, gp, mp, vp) = (ptr(var), ptr(grad), ptr(exp_avg), ptr(exp_avg_sq));
    let (ep, weight) = match extras.ema {
        Some((shadow, weight)) => (Some(ptr(shadow)), weight),
        None => (None, 0.0),
    };
    let (scale, zero) = (extras.grad_scale, extras.zero_grad);
    omp_team::for_each_chunk(n, 16, |r| {
        // SAFETY: dense f32 CPU tensors of `n` elements each, laid out alike and pairwise
        // disjoint (checked above), alive for this call, under no-grad, and nothing else touches
        // them meanwhile; each thread takes a disjoint `r`.
        let slices = unsafe {
            Slices {
                p: pp.slice_mut(r.clone()),
                g: gp.slice_mut(r.clone()),
                m: mp.slice_mut(r.clone()),
                v: vp.slice_mut(r.clone()),
                e: ep.map_or(&mut [][..], |e| e.slice_mut(r.clone())),
            }
        };
        adam_serial(slices, s, scale, zero, weight);
    });
    true
}

/// One thread's share of the arrays of [`adam_step`]; `e` is empty without an EMA.
struct Slices<'a> {
    p: &'a mut [f32],
    g: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    e: &'a mut [f32],
}

/// [`adam_step`] on the calling thread, with the widest instructions the CPU has and a loop
/// compiled for each combination of extras (so that each stays vectorised).
fn adam_serial(x: Slices<'_>, s: AdamScalars, scale: f32, zero: bool, weight: f32) {
    let ema = !x.e.is_empty();
    macro_rules! run {
        ($zero:literal, $ema:literal) => {{
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { adam_avx2_fma::<$zero, $ema>(x, s, scale, weight) };
                return;
            }
            adam_elements::<$zero, $ema>(x, s, scale, weight);
        }};
    }
    match (zero, ema) {
        (false, false) => run!(false, false),
        (true, false) => run!(true, false),
        (false, true) => run!(false, true),
        (true, true) => run!(true, true),
    }
}

/// [`adam_elements`] compiled for AVX2 with hardware fused multiply-add (vectorised by the
/// compiler; without it every `mul_add` is a library call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adam_avx2_fma<const ZERO: bool, const EMA: bool>(
    x: Slices<'_>,
    s: AdamScalars,
    scale: f32,
    weight: f32,
) {
    adam_elements::<ZERO, EMA>(x, s, scale, weight);
}

/// The Adam/AdamW update of every element, in the order of the tensor operations it replaces,
/// with the gradient scaled by `scale` first, then (`ZERO`) zeroed, and (`EMA`) the shadow
/// averaged toward the new value with `weight`, as [`lerp_into`] would.
#[inline(always)]
fn adam_elements<const ZERO: bool, const EMA: bool>(
    x: Slices<'_>,
    s: AdamScalars,
    scale: f32,
    weight: f32,
) {
    let n = x.p.len();
    let (g, m, v) = (&mut x.g[..n], &mut x.m[..n], &mut x.v[..n]);
    let (p, e) = (x.p, if EMA { &mut x.e[..n] } else { x.e });
    for i in 0..n {
        let mut theta = p[i];
        let mut gi = g[i] * scale;
        if ZERO {
            g[i] = 0.0;
        }
        if let Some(decay) = s.decay {
            theta *= decay;
        }
        if let Some(l2) = s.l2 {
            gi = theta.mul_add(l2, gi);
        }
        let mi = lerp(m[i], gi, s.one_minus_beta1);
        let vi = (gi * s.one_minus_beta2).mul_add(gi, v[i] * s.beta2);
        let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
        let updated = theta + (mi * s.neg_step_size) / denom;
        p[i] = updated;
        m[i] = mi;
        v[i] = vi;
        if EMA {
            e[i] = lerp(e[i], updated, weight);
        }
    }
}

/// `θ_ema ← lerp(θ_ema, θ, w)` over one variable, now, in place, on the calling thread;
/// `false` (touching nothing) unless both are dense f32 CPU tensors laid out alike
/// ([`same_dense_layout`]) in disjoint memory.
pub fn lerp_into(shadow: &Tensor, var: &Tensor, weight: f32) -> bool {
    if !(same_dense_layout(&[shadow, var]) && disjoint(&[shadow, var])) {
        return false;
    }
    let n = var.numel();
    // SAFETY: two disjoint dense f32 CPU tensors of `n` elements laid out alike (checked
    // above); the slices live only for this call.
    unsafe {
        lerp_slices(
            std::slice::from_raw_parts_mut(shadow.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(var.data_ptr() as *const f32, n),
            weight,
        );
    }
    true
}

/// `lerp` over matching slices, split over libtorch's OpenMP threads.
fn lerp_slices(e: &mut [f32], p: &[f32], weight: f32) {
    let n = e.len().min(p.len());
    let (ep, pp) = (SyncPtr(e.as_mut_ptr()), SyncPtr(p.as_ptr() as *mut f32));
    omp_team::for_each_chunk(n, 16, |r| {
        // SAFETY: both slices hold `n` elements; each thread takes a disjoint `r`, and the
        // variable is only read.
        unsafe { lerp_serial(ep.slice_mut(r.clone()), pp.slice(r), weight) }
    });
}

/// [`lerp_slices`] on the calling thread, with the widest instructions the CPU has.
fn lerp_serial(e: &mut [f32], p: &[f32], weight: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { lerp_avx2_fma(e, p, weight) };
        return;
    }
    lerp_elements(e, p, weight);
}

/// [`lerp_elements`] compiled for AVX2 with hardware fused multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lerp_avx2_fma(e: &mut [f32], p: &[f32], weight: f32) {
    lerp_elements(e, p, weight);
}

#[inline(always)]
fn lerp_elements(e: &mut [f32], p: &[f32], weight: f32) {
    for (e, &p) in e.iter_mut().zip(p) {
        *e = lerp(*e, p, weight);
    }
}

/// `Σ t²` over a dense f32 CPU tensor, accumulated in f64 (blocks of [`SUM_BLOCK`] elements
/// summed over libtorch's OpenMP threads, then added in order: the same value for any thread
/// count, and the value the MLP's backward pass computes for the gradients it writes,
/// [`difflab_models::MlpDenoiser::backward`]); `None` for anything else.
pub fn sum_of_squares(t: &Tensor) -> Option<f64> {
    if !is_dense_cpu_f32(t) {
        return None;
    }
    let n = t.numel();
    let mut blocks = vec![0.0_f64; n.div_ceil(SUM_BLOCK)];
    let (x, out) = (
        SyncPtr(t.data_ptr() as *mut f32),
        SyncPtr(blocks.as_mut_ptr()),
    );
    omp_team::for_each_chunk(n, SUM_BLOCK, |r| {
        // SAFETY: `t` holds `n` dense f32 elements, read only; chunk starts are multiples of
        // `SUM_BLOCK`, so each thread writes the distinct block sums of its own range.
        let (x, sums) = unsafe {
            (
                x.slice(r.clone()),
                out.slice_mut(r.start / SUM_BLOCK..r.end.div_ceil(SUM_BLOCK)),
            )
        };
        for (block, sum) in x.chunks(SUM_BLOCK).zip(sums) {
            *sum = squares(block);
        }
    });
    Some(blocks.iter().sum())
}

/// `t ← t·factor` in place over a dense f32 CPU tensor (each product rounded to f32, as
/// libtorch's `mul_`), split over libtorch's OpenMP threads; `false` (touching nothing) for
/// anything else.
pub fn scale_in_place(t: &Tensor, factor: f32) -> bool {
    if !is_dense_cpu_f32(t) {
        return false;
    }
    let n = t.numel();
    let x = SyncPtr(t.data_ptr() as *mut f32);
    omp_team::for_each_chunk(n, 16, |r| {
        // SAFETY: `t` holds `n` dense f32 elements; each thread takes a disjoint `r`.
        let x = unsafe { x.slice_mut(r) };
        x.iter_mut().for_each(|v| *v *= factor);
    });
    true
}

/// `t ← 0` in place over a dense f32 CPU tensor that needs no autograd record, split over
/// libtorch's OpenMP threads; `false` (touching nothing) for anything else.
pub fn zero_in_place(t: &Tensor) -> bool {
    if !is_dense_cpu_f32(t) || t.requires_grad() {
        return false;
    }
    let x = SyncPtr(t.data_ptr() as *mut f32);
    omp_team::for_each_chunk(t.numel(), 16, |r| {
        // SAFETY: `t` holds `numel` dense f32 elements; each thread takes a disjoint `r`.
        unsafe { x.slice_mut(r) }.fill(0.0);
    });
    true
}

/// libtorch's vectorised `lerp(a, b, w)` (`lerp_vec` in `ATen/native/cpu/Lerp.h`), which its
/// CPU kernel runs on every full vector of a contiguous tensor: one fused multiply-add,
/// `fma(w, b − a, a)` for `|w| < 0.5`, else `fma(w − 1, b − a, b)`.
#[inline(always)]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        w.mul_add(b - a, a)
    } else {
        (w - 1.0).mul_add(b - a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The scalars of an AdamW step at a typical point, with the given decay factor.
    fn scalars(decay: Option<f32>) -> AdamScalars {
        AdamScalars {
            decay,
            l2: None,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            bias_correction2_sqrt: 0.03,
            eps: 1e-8,
            neg_step_size: -1e-3,
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).expect("f32");
        v.into_iter().map(f32::to_bits).collect()
    }

    #[test]
    fn lerp_into_matches_libtorch_lerp_bit_for_bit() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        for (n, weight) in [
            (4099, 1.0 - 0.9999),
            (37, 0.3),
            (1000, 0.75),
            (5, 1.0),
            (100_003, 0.01),
        ] {
            let shadow = Tensor::randn([n], f);
            let var = Tensor::randn([n], f) * 3.0;
            let mut expected = shadow.copy();
            let _ = expected.lerp_(&var, weight);
            assert!(lerp_into(&shadow, &var, weight as f32));
            assert_eq!(bits(&shadow), bits(&expected), "n = {n}, weight = {weight}");
        }
    }

    #[test]
    fn sum_of_squares_is_exact_on_small_integers_and_close_on_large_tensors() {
        let t = Tensor::from_slice(&[3.0_f32, -4.0, 12.0]);
        assert_eq!(sum_of_squares(&t), Some(169.0));
        let big = Tensor::randn(
            [3 * omp_team::GRAIN as i64 + 77],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let expected = f64::try_from(
            big.to_kind(tch::Kind::Double)
                .square()
                .sum(tch::Kind::Double),
        )
        .expect("f64");
        let got = sum_of_squares(&big).expect("dense f32");
        assert!(
            (got - expected).abs() <= 1e-12 * expected,
            "{got} vs {expected}"
        );
        assert_eq!(sum_of_squares(&big.to_kind(tch::Kind::Double)), None);
        let scaled = big.copy();
        assert!(scale_in_place(&scaled, 0.3));
        assert!(
            scaled.equal(&(&big * 0.3)),
            "the products libtorch's mul gives"
        );
    }

    #[test]
    fn the_split_over_threads_changes_no_bit() {
        let n = 3 * omp_team::GRAIN + 13;
        let mut rng = 0x2545_f491_u32;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (rng as f32 / u32::MAX as f32 - 0.5) * 4.0
        };
        let g: Vec<f32> = (0..n).map(|_| next()).collect();
        let start: [Vec<f32>; 3] = std::array::from_fn(|_| (0..n).map(|_| next().abs()).collect());
        let s = scalars(Some(0.999));
        let tensor = |v: &[f32]| Tensor::from_slice(v);
        for (zero, ema) in [(false, false), (true, false), (false, true), (true, true)] {
            // Split over the OpenMP team (through the tensors) and on one thread.
            let [p1, m1, v1] = std::array::from_fn(|i| tensor(&start[i]));
            let (g1, e1) = (tensor(&g), tensor(&start[2]));
            let extras = Extras {
                grad_scale: 0.75,
                zero_grad: zero,
                ema: ema.then_some((&e1, 0.01)),
            };
            assert!(adam_step(&p1, &g1, &m1, &v1, s, extras));
            let [mut p2, mut m2, mut v2] = start.clone();
            let (mut g2, mut e2) = (g.clone(), if ema { start[2].clone() } else { vec![] });
            let slices = Slices {
                p: &mut p2,
                g: &mut g2,
                m: &mut m2,
                v: &mut v2,
                e: &mut e2,
            };
            adam_serial(slices, s, 0.75, zero, 0.01);
            let split: Vec<Vec<f32>> = [&p1, &g1, &m1, &v1, &e1]
                .iter()
                .map(|t| Vec::try_from(*t).expect("f32"))
                .collect();
            let e2 = if ema { e2 } else { start[2].clone() };
            for (a, b) in split.iter().zip([&p2, &g2, &m2, &v2, &e2]) {
                assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            assert_eq!(
                g2.iter().all(|&x| x == 0.0),
                zero,
                "zeroed with zero_grad only"
            );
            assert!(p2 != start[0], "the step changed the parameters");
        }
        let (mut e1, mut e2) = (start[0].clone(), start[0].clone());
        lerp_slices(&mut e1, &g, 0.01);
        lerp_serial(&mut e2, &g, 0.01);
        assert!(e1.iter().zip(&e2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(omp_team::threads_for(n) >= 1);
    }

    #[test]
    fn dense_layouts_other_than_contiguous_are_accepted() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        // Channels-last [N, C, H, W]: the memory of a contiguous [N, H, W, C], permuted.
        let channels_last = |t: &Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let shadow = channels_last(&Tensor::randn([2, 3, 4, 5], f));
        let var = channels_last(&Tensor::randn([2, 3, 4, 5], f));
        assert!(is_dense_cpu_f32(&shadow) && !shadow.is_contiguous());
        assert!(!is_dense_cpu_f32(&shadow.narrow(2, 0, 2)));
        let mut expected = shadow.copy();
        let _ = expected.lerp_(&var, 0.25);
        assert!(lerp_into(&shadow, &var, 0.25));
        assert_eq!(bits(&shadow), bits(&expected));
        // A contiguous and a channels-last tensor are not laid out alike.
        assert!(!lerp_into(&shadow, &var.contiguous(), 0.25));
    }

    #[test]
    fn kernels_refuse_what_they_cannot_read_as_f32_slices() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        let a = Tensor::randn([4, 4], f);
        let b = Tensor::randn([4, 4], f);
        let before = bits(&a);
        // Layouts that differ, gappy views, f64, overlapping memory, size mismatch: untouched,
        // `false`.
        assert!(!lerp_into(&a.tr(), &b, 0.5));
        assert!(!lerp_into(&a.narrow(1, 0, 2), &b.narrow(1, 0, 2), 0.5));
        assert!(!lerp_into(&a, &b.to_kind(Kind::Double), 0.5));
        assert!(!lerp_into(&a.narrow(0, 0, 2), &a.narrow(0, 1, 2), 0.5));
        assert!(!lerp_into(&a, &b.narrow(0, 0, 2), 0.5));
        let s = scalars(None);
        assert!(
            !adam_step(&a, &a, &b, &b.copy(), s, Extras::NONE),
            "aliased parameter and gradient"
        );
        assert_eq!(bits(&a), before);
    }
}
