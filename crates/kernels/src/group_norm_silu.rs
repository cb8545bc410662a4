//! GroupNorm followed by SiLU at inference in one kernel, with the per-channel terms a resnet
//! block puts between them (the time embedding added before the norm, or AdaGN's scale and
//! shift after it).
//!
//! A UNet runs `SiLU(GroupNorm(·))` twice per resnet block. libtorch does it as three
//! operations — moments, normalisation with the affine, SiLU — and each of the block's
//! per-channel terms is one more, each reading and writing the whole activation. Here the
//! per-channel sums come from one pass (f32 blocks of 256, f64 totals), every term folds into one
//! per-channel `a·x + b`, and a second pass writes `SiLU(a·x + b)` with [`crate::cpu`]'
//! SiLU while the plane is in cache; planes are split over libtorch's OpenMP team
//! ([`crate::omp_team`]). Under autograd, or for other layouts, kinds and devices, the same
//! function composes libtorch's operations instead.

use tch::{Tensor, nn};

use crate::cpu::{self, is_contiguous_cpu_f32, records_grad};
use crate::omp_team::{self, SyncPtr};

/// Largest input (elements) the fused kernel takes: up to this size it beats libtorch's
/// GroupNorm followed by difflab's SiLU (one pass fewer over a plane that stays in cache);
/// above it libtorch's operations stay. The kernel benchmarks behind the limit are in
/// docs/performance.md.
pub const FUSED_MAX_ELEMENTS: usize = 32_768;

/// Elements per thread below which the kernel's passes stay on one thread.
const GRAIN: usize = 4096;

/// What a resnet block applies per channel around its second norm (`[B or 1, C, 1, 1]`
/// tensors, or `[C]`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Modulation<'a> {
    /// Added to the input before the norm (the time embedding, `TimeConditioning::Add`).
    pub offset: Option<&'a Tensor>,
    /// `n·(1 + scale)` after the norm (AdaGN, `TimeConditioning::ScaleShift`).
    pub scale: Option<&'a Tensor>,
    /// Added after the scale (AdaGN).
    pub shift: Option<&'a Tensor>,
}

/// `SiLU(GroupNorm(x + offset)·(1 + scale) + shift)` for `x` `[B, C, …]`, with `norm`'s groups,
/// weight and bias and epsilon `eps`; the missing terms drop out (`offset = 0`, `scale = 0`,
/// `shift = 0`). One fused kernel for a contiguous f32 CPU `x` of at most
/// [`FUSED_MAX_ELEMENTS`] with an affine norm when autograd records nothing (see the module
/// doc); `None` otherwise.
pub fn group_norm_silu(
    x: &Tensor,
    norm: &nn::GroupNorm,
    eps: f64,
    terms: Modulation<'_>,
) -> Option<Tensor> {
    Fused::plan(x, norm, terms).map(|plan| plan.run(x, eps))
}

/// The same function as libtorch operations (the reference of the tests).
#[cfg(test)]
fn composed(x: &Tensor, norm: &nn::GroupNorm, terms: Modulation<'_>) -> Tensor {
    let normed = match terms.offset {
        Some(offset) => nn::Module::forward(norm, &(x + offset)),
        None => nn::Module::forward(norm, x),
    };
    let scaled = match terms.scale {
        Some(scale) => normed * (1.0 + scale),
        None => normed,
    };
    crate::cpu::silu_owned(match terms.shift {
        Some(shift) => scaled + shift,
        None => scaled,
    })
}

/// The fused kernel's operands, checked.
struct Fused<'a> {
    batch: usize,
    channels: usize,
    plane: usize,
    groups: usize,
    gamma: &'a [f32],
    beta: &'a [f32],
    /// Per-channel terms with how many batch rows each has (1: shared, or `batch`).
    offset: Option<(&'a [f32], usize)>,
    scale: Option<(&'a [f32], usize)>,
    shift: Option<(&'a [f32], usize)>,
}

impl<'a> Fused<'a> {
    /// The operands when the fused kernel applies to these tensors.
    fn plan(x: &Tensor, norm: &'a nn::GroupNorm, terms: Modulation<'a>) -> Option<Self> {
        let size = x.size();
        if size.len() < 2 || !is_contiguous_cpu_f32(x) || x.numel() > FUSED_MAX_ELEMENTS {
            return None;
        }
        let (batch, channels) = (size[0] as usize, size[1] as usize);
        let plane = size[2..].iter().product::<i64>() as usize;
        let groups = norm.num_groups as usize;
        if channels == 0
            || groups == 0
            || channels % groups != 0
            || norm.num_channels as usize != channels
        {
            return None;
        }
        let operands = [
            norm.ws.as_ref(),
            norm.bs.as_ref(),
            terms.offset,
            terms.scale,
            terms.shift,
        ];
        if records_grad(std::iter::once(x).chain(operands.into_iter().flatten())) {
            return None;
        }
        let vector = |t: &'a Tensor, rows_allowed: bool| -> Option<(&'a [f32], usize)> {
            let n = t.numel();
            let rows = n / channels;
            let fits = is_contiguous_cpu_f32(t)
                && n.is_multiple_of(channels)
                && (rows == 1 || (rows_allowed && rows == batch));
            fits.then(|| {
                // SAFETY: a contiguous f32 CPU tensor of `n` elements, borrowed for 'a.
                let values = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) };
                (values, rows)
            })
        };
        let (gamma, _) = vector(norm.ws.as_ref()?, false)?;
        let (beta, _) = vector(norm.bs.as_ref()?, false)?;
        let term = |t: Option<&'a Tensor>| match t {
            Some(t) => vector(t, true).map(Some),
            None => Some(None),
        };
        Some(Self {
            batch,
            channels,
            plane,
            groups,
            gamma,
            beta,
            offset: term(terms.offset)?,
            scale: term(terms.scale)?,
            shift: term(terms.shift)?,
        })
    }

    /// The output, a new contiguous tensor shaped like `x`.
    fn run(&self, x: &Tensor, eps: f64) -> Tensor {
        let out = x.empty_like();
        let (len, plane) = (self.batch * self.channels * self.plane, self.plane);
        if len == 0 {
            return out;
        }
        let (src, dst) = (
            SyncPtr(x.data_ptr() as *mut f32),
            SyncPtr(out.data_ptr() as *mut f32),
        );
        // Pass 1: each plane's sum and sum of squares.
        let planes = self.batch * self.channels;
        let mut sums = vec![(0.0_f64, 0.0_f64); planes];
        let sums_ptr = SyncPtr(sums.as_mut_ptr());
        omp_team::for_each_chunk_grain(len, plane, GRAIN, |r| {
            // SAFETY: `x` holds `len` contiguous f32; the ranges are whole planes, disjoint, and
            // each thread writes only the sums of its own planes.
            let (values, sums) = unsafe {
                (
                    src.slice(r.clone()),
                    sums_ptr.slice_mut(r.start / plane..r.end.div_ceil(plane)),
                )
            };
            for (v, s) in values.chunks(plane).zip(sums) {
                *s = plane_sums(v);
            }
        });
        // Per (example, channel): the `a·x + b` the plane is mapped by before SiLU.
        let per_group = self.channels / self.groups;
        let count = (per_group * plane) as f64;
        let at = |t: Option<(&[f32], usize)>, n: usize, c: usize| {
            t.map(|(v, rows)| f64::from(v[(n % rows) * self.channels + c]))
        };
        let mut coefficients = vec![(0.0_f32, 0.0_f32); planes];
        for n in 0..self.batch {
            for g in 0..self.groups {
                let (mut s, mut q) = (0.0, 0.0);
                for c in g * per_group..(g + 1) * per_group {
                    let (cs, cq) = sums[n * self.channels + c];
                    let o = at(self.offset, n, c).unwrap_or(0.0);
                    let p = plane as f64;
                    s += cs + p * o;
                    q += cq + 2.0 * o * cs + p * o * o;
                }
                let mean = s / count;
                let rstd = 1.0 / ((q / count - mean * mean).max(0.0) + eps).sqrt();
                for c in g * per_group..(g + 1) * per_group {
                    let o = at(self.offset, n, c).unwrap_or(0.0);
                    let gain = 1.0 + at(self.scale, n, c).unwrap_or(0.0);
                    let (gamma, beta) = (f64::from(self.gamma[c]), f64::from(self.beta[c]));
                    let a = rstd * gamma * gain;
                    let b = ((o - mean) * rstd * gamma + beta) * gain
                        + at(self.shift, n, c).unwrap_or(0.0);
                    coefficients[n * self.channels + c] = (a as f32, b as f32);
                }
            }
        }
        // Pass 2: SiLU(a·x + b), plane by plane.
        let coefficients = &coefficients;
        omp_team::for_each_chunk_grain(len, plane, GRAIN, |r| {
            // SAFETY: as in pass 1; `out` is a fresh tensor of `len` elements, written only in
            // this thread's planes.
            let (values, outs) = unsafe { (src.slice(r.clone()), dst.slice_mut(r.clone())) };
            let first = r.start / plane;
            for (i, (v, o)) in values.chunks(plane).zip(outs.chunks_mut(plane)).enumerate() {
                let (a, b) = coefficients[first + i];
                affine(o, v, a, b);
                // SAFETY: in place over this plane's elements.
                unsafe { cpu::silu_serial(o.as_mut_ptr(), o.as_ptr(), o.len()) };
            }
        });
        out
    }
}

/// `(Σx, Σx²)` of one plane: 16 f32 lanes over blocks of 256 elements, each block's total
/// added in f64 (so the rounding error stays that of 256-element sums at any plane size).
fn plane_sums(values: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if cpu::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { plane_sums_avx2(values) };
    }
    plane_sums_portable(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn plane_sums_avx2(values: &[f32]) -> (f64, f64) {
    plane_sums_portable(values)
}

#[inline(always)]
fn plane_sums_portable(values: &[f32]) -> (f64, f64) {
    let (mut sum, mut squares) = (0.0_f64, 0.0_f64);
    for block in values.chunks(256) {
        let (mut s, mut q) = ([0.0_f32; 16], [0.0_f32; 16]);
        let lanes = block.chunks_exact(16);
        let tail = lanes.remainder();
        for chunk in lanes {
            for k in 0..16 {
                s[k] += chunk[k];
                q[k] += chunk[k] * chunk[k];
            }
        }
        for &v in tail {
            s[0] += v;
            q[0] += v * v;
        }
        sum += s.iter().map(|&v| f64::from(v)).sum::<f64>();
        squares += q.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    (sum, squares)
}

/// `out[i] = a·x[i] + b`.
fn affine(out: &mut [f32], x: &[f32], a: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    if cpu::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { affine_avx2(out, x, a, b) };
    }
    affine_portable(out, x, a, b);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn affine_avx2(out: &mut [f32], x: &[f32], a: f32, b: f32) {
    affine_portable(out, x, a, b);
}

#[inline(always)]
fn affine_portable(out: &mut [f32], x: &[f32], a: f32, b: f32) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = a * *v + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn f32_cpu() -> (Kind, Device) {
        (Kind::Float, Device::Cpu)
    }

    fn max_error(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Every combination of terms, shared (`[1, C, 1, 1]`) and per example (`[B, C, 1, 1]`),
    /// against libtorch's GroupNorm, arithmetic and SiLU, at sizes on one thread and split.
    #[test]
    fn matches_the_composed_operations() {
        let _guard = tch::no_grad_guard();
        for &(b, c, hw, groups) in &[(1, 8, 5, 4), (2, 6, 4, 3), (1, 64, 16, 8), (2, 32, 8, 32)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let norm = nn::group_norm(vs.root(), groups, c, Default::default());
            // Non-trivial affine parameters.
            norm.ws
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::randn([c], f32_cpu()));
            norm.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::randn([c], f32_cpu()));
            // A mean far from zero, as activations have.
            let x = Tensor::randn([b, c, hw, hw], f32_cpu()) * 3.0 + 5.0;
            let shared = Tensor::randn([1, c, 1, 1], f32_cpu());
            let per_example = Tensor::randn([b, c, 1, 1], f32_cpu());
            let shift = Tensor::randn([1, c, 1, 1], f32_cpu());
            for terms in [
                Modulation::default(),
                Modulation {
                    offset: Some(&shared),
                    ..Default::default()
                },
                Modulation {
                    offset: Some(&per_example),
                    ..Default::default()
                },
                Modulation {
                    scale: Some(&per_example),
                    shift: Some(&shift),
                    ..Default::default()
                },
            ] {
                assert!(Fused::plan(&x, &norm, terms).is_some());
                let fused = group_norm_silu(&x, &norm, 1e-5, terms).expect("applies");
                let reference = composed(&x, &norm, terms);
                let err = max_error(&fused, &reference);
                assert!(err < 2e-5, "[{b}, {c}, {hw}, {hw}] / {groups}: {err}");
            }
        }
    }

    #[test]
    fn autograd_and_other_layouts_take_libtorchs_operations() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = nn::group_norm(vs.root(), 2, 4, Default::default());
        let x = Tensor::randn([1, 4, 3, 3], f32_cpu());
        // Grad mode on and the norm's parameters require grad: training.
        assert!(Fused::plan(&x, &norm, Modulation::default()).is_none());
        assert!(group_norm_silu(&x, &norm, 1e-5, Modulation::default()).is_none());
        let _guard = tch::no_grad_guard();
        assert!(Fused::plan(&x, &norm, Modulation::default()).is_some());
        let strided = Tensor::randn([1, 4, 3, 6], f32_cpu()).narrow(3, 0, 3);
        assert!(Fused::plan(&strided, &norm, Modulation::default()).is_none());
        let doubles = x.to_kind(Kind::Double);
        assert!(Fused::plan(&doubles, &norm, Modulation::default()).is_none());
        let wrong_rows = Tensor::randn([3, 4, 1, 1], f32_cpu());
        let terms = Modulation {
            offset: Some(&wrong_rows),
            ..Default::default()
        };
        assert!(Fused::plan(&x, &norm, terms).is_none());
    }
}
