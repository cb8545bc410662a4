//! Hand-written CPU kernels for what libtorch does slowly at the sizes difflab runs: SiLU at
//! inference, in place, and at the same cost for every input — libtorch's SLEEF `expf` takes a
//! slow path for arguments beyond about ±88, which slows SiLU down several-fold on the
//! diverging samples of an untrained network (see docs/performance.md).
//!
//! The kernels run on f32 CPU tensors that fill one dense block of memory
//! ([`is_dense_cpu_f32`]) and need no autograd record; anything else falls back to the libtorch
//! operation, so callers can use them unconditionally. Large tensors are split over libtorch's
//! own OpenMP threads ([`omp_team`]) from the same size on as libtorch's kernels would split
//! them; a thread of our own would compete with libtorch's spinning OpenMP workers instead.

use tch::{Device, Kind, Tensor};

use crate::omp_team::{self, SyncPtr};

/// Whether `t` is a contiguous (row-major) f32 CPU tensor: what difflab's kernels read as a
/// plain slice in index order.
pub fn is_contiguous_cpu_f32(t: &Tensor) -> bool {
    t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// Whether autograd records operations on this thread now (`torch.is_grad_enabled()`).
pub fn grad_enabled() -> bool {
    // SAFETY: sets the thread-local grad mode and puts the previous value straight back.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

/// Whether an operation on `inputs` (activations and parameters alike) must be recorded for
/// autograd: grad mode on and some input requiring a gradient. Where it is `false`, difflab's
/// own kernels may compute the operation instead of libtorch.
pub fn records_grad<'a>(inputs: impl IntoIterator<Item = &'a Tensor>) -> bool {
    grad_enabled() && inputs.into_iter().any(Tensor::requires_grad)
}

/// Whether `t` is an f32 CPU tensor whose `numel` elements fill one block of memory without
/// gaps (in whatever dimension order: contiguous, channels-last, …), so it can be read as a
/// plain `[f32]` slice in memory order.
pub fn is_dense_cpu_f32(t: &Tensor) -> bool {
    dense_cpu_f32_layout(t).is_some()
}

/// The sizes and strides of `t` when [`is_dense_cpu_f32`] holds for it (read once, for callers
/// that compare layouts too).
pub fn dense_cpu_f32_layout(t: &Tensor) -> Option<(Vec<i64>, Vec<i64>)> {
    if !(t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float) {
        return None;
    }
    let (size, stride) = (t.size(), t.stride());
    let mut dims: Vec<(i64, i64)> = stride
        .iter()
        .copied()
        .zip(size.iter().copied())
        .filter(|&(_, size)| size != 1)
        .collect();
    dims.sort_unstable();
    let mut expected = 1;
    for (stride, size) in dims {
        if stride != expected {
            return None;
        }
        expected *= size;
    }
    Some((size, stride))
}

/// Whether this CPU has AVX2 and hardware fused multiply-add (the detection is cached by the
/// standard library). Kernels compiled for them run several times faster than the portable
/// build, where every `mul_add` is a library call.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether this CPU has AVX2 and hardware fused multiply-add (never, off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub fn has_avx2_fma() -> bool {
    false
}

/// `x·σ(x)` (SiLU; Elfwing et al. 2018) of a tensor that is consumed, in place when it needs no
/// autograd record: through this module's kernel for a dense f32 CPU tensor (split over
/// libtorch's OpenMP threads from [`omp_team::GRAIN`] elements per thread), else libtorch's
/// `silu` (under autograd, or for other kinds, devices and layouts).
///
/// Pass only a tensor nothing else refers to (the fresh result of an operation): its memory is
/// reused. The result agrees with libtorch's `silu` to within a few ulp (tested); see
/// [`silu_in_slice`].
pub fn silu_owned(x: Tensor) -> Tensor {
    if x.requires_grad() || !is_dense_cpu_f32(&x) {
        return x.silu();
    }
    let n = x.numel();
    // SAFETY: a dense f32 CPU tensor of `n` elements (checked above) that the caller hands
    // over; the slice lives only for this call.
    unsafe {
        silu_in_slice(std::slice::from_raw_parts_mut(x.data_ptr() as *mut f32, n));
    }
    x
}

/// `SiLU(x + row)` for a fresh matrix `x` (`[R, C]`) and a row vector of `C` elements added to
/// every row (a layer's bias), in place: the bias is added to one row while it sits in the L1
/// cache and SiLU follows there, instead of a separate broadcast pass over the whole matrix.
/// Rows are split over libtorch's OpenMP threads as [`silu_owned`] splits elements. Falls back
/// to `(x + row).silu()` unless `x` is a contiguous f32 CPU matrix with no autograd record and
/// `row` a contiguous f32 CPU tensor of `C` elements.
pub fn silu_with_row_bias_owned(x: Tensor, row: &Tensor) -> Tensor {
    let size = x.size();
    let applies = size.len() == 2
        && x.is_contiguous()
        && !x.requires_grad()
        && is_dense_cpu_f32(&x)
        && is_dense_cpu_f32(row)
        && row.is_contiguous()
        && !row.requires_grad()
        && row.numel() as i64 == size[1];
    if !applies {
        return silu_owned(x + row);
    }
    let width = size[1] as usize;
    if width == 0 {
        return x;
    }
    let (out, bias) = (
        SyncPtr(x.data_ptr() as *mut f32),
        SyncPtr(row.data_ptr() as *mut f32),
    );
    omp_team::for_each_chunk(x.numel(), width, |r| {
        // SAFETY: `x` holds `numel` contiguous f32 elements and chunks start on row boundaries
        // (multiples of `width`), so each thread takes whole rows of its own; `row` holds
        // `width` elements, read only, and is a different tensor from `x`.
        let (rows, bias) = unsafe { (out.slice_mut(r), bias.slice(0..width)) };
        for line in rows.chunks_mut(width) {
            line.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            let ptr = line.as_mut_ptr();
            // SAFETY: in place over the `line.len()` elements of this row.
            unsafe { silu_serial(ptr, ptr, line.len()) };
        }
    });
    x
}

/// `x·σ(x)` of a borrowed tensor into a new one of the same layout: this module's kernel where
/// [`silu_owned`] would use it (one pass, no copy), else `x.silu()`.
pub fn silu(x: &Tensor) -> Tensor {
    if x.requires_grad() || !is_dense_cpu_f32(x) {
        return x.silu();
    }
    let out = x.empty_like();
    if out.stride() != x.stride() {
        return x.silu();
    }
    let n = x.numel();
    // SAFETY: `x` and `out` are dense f32 CPU tensors of `n` elements with the same strides,
    // so the same offset holds the same element; `out` is fresh, so they do not overlap.
    unsafe {
        silu_slices(
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(x.data_ptr() as *const f32, n),
        );
    }
    out
}

/// SiLU of every element of `x`, in place, with the widest instructions the CPU has, split
/// over libtorch's OpenMP threads from [`omp_team::GRAIN`] elements per thread.
pub fn silu_in_slice(x: &mut [f32]) {
    let ptr = x.as_mut_ptr();
    // SAFETY: reading and writing the same slice element by element is allowed.
    unsafe { silu_parallel(ptr, ptr, x.len()) }
}

/// `out[i] = silu(x[i])` over matching slices (see [`silu_in_slice`]).
fn silu_slices(out: &mut [f32], x: &[f32]) {
    let n = out.len().min(x.len());
    // SAFETY: both slices hold `n` elements and do not overlap (one is borrowed mutably).
    unsafe { silu_parallel(out.as_mut_ptr(), x.as_ptr(), n) }
}

/// `out[i] = silu(x[i])` for `i < n`, in chunks over [`omp_team::for_each_chunk`]. Each chunk
/// but the last is a whole number of 16-lane vectors, and every element takes the same
/// instructions wherever it falls, so the result does not depend on the split.
///
/// # Safety
/// `x` is readable and `out` writable for `n` elements; `out` may equal `x`, or not overlap it.
unsafe fn silu_parallel(out: *mut f32, x: *const f32, n: usize) {
    let (out, x) = (SyncPtr(out), SyncPtr(x as *mut f32));
    omp_team::for_each_chunk(n, 16, |r| {
        // SAFETY: `r` lies within `0..n`, and the chunks are disjoint.
        unsafe { silu_serial(out.get().add(r.start), x.get().add(r.start), r.len()) }
    });
}

/// `out[i] = silu(x[i])` for `i < n` on the calling thread.
///
/// # Safety
/// As [`silu_parallel`].
pub(crate) unsafe fn silu_serial(out: *mut f32, x: *const f32, n: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    if unsafe { simd::silu(out, x, n) } {
        return;
    }
    for i in 0..n {
        // SAFETY: `i < n`; an element is read before it is written.
        unsafe { *out.add(i) = silu_scalar(*x.add(i)) };
    }
}

/// `∂z = ∂h·σ(z)·(1 + z·(1 − σ(z)))`: the gradient of SiLU at `z` for the upstream gradient
/// `grad` (what libtorch's `silu_backward` computes, to a few ulp), as a new tensor. This
/// module's arithmetic ([`exp_finite`], so its cost does not depend on `z`) for dense f32 CPU
/// tensors laid out alike with no autograd record, split over libtorch's OpenMP threads when
/// large; else libtorch's `silu_backward`.
pub fn silu_backward(grad: &Tensor, z: &Tensor) -> Tensor {
    let applies = !grad.requires_grad()
        && !z.requires_grad()
        && is_dense_cpu_f32(grad)
        && is_dense_cpu_f32(z)
        && grad.size() == z.size()
        && grad.stride() == z.stride();
    if !applies {
        return z.silu_backward(grad);
    }
    let out = z.empty_like();
    if out.stride() != z.stride() {
        return z.silu_backward(grad);
    }
    let n = z.numel();
    let (o, g, x) = (
        SyncPtr(out.data_ptr() as *mut f32),
        SyncPtr(grad.data_ptr() as *mut f32),
        SyncPtr(z.data_ptr() as *mut f32),
    );
    omp_team::for_each_chunk(n, 16, |r| {
        // SAFETY: three dense f32 tensors of `n` elements laid out alike (checked above); `out`
        // is fresh, so it overlaps neither input; each thread takes a disjoint `r`.
        unsafe { silu_backward_serial(o.slice_mut(r.clone()), g.slice(r.clone()), x.slice(r)) }
    });
    out
}

/// [`silu_backward`] over matching slices on the calling thread.
pub(crate) fn silu_backward_serial(out: &mut [f32], grad: &[f32], z: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { silu_backward_avx2_fma(out, grad, z) };
        return;
    }
    silu_backward_elements(out, grad, z);
}

/// [`silu_backward_elements`] compiled for AVX2 with hardware fused multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_backward_avx2_fma(out: &mut [f32], grad: &[f32], z: &[f32]) {
    silu_backward_elements(out, grad, z);
}

#[inline(always)]
fn silu_backward_elements(out: &mut [f32], grad: &[f32], z: &[f32]) {
    for ((o, &g), &z) in out.iter_mut().zip(grad).zip(z) {
        let s = 1.0 / (1.0 + exp_finite(-z));
        *o = g * (s * z.mul_add(1.0 - s, 1.0));
    }
}

/// The vectorised SiLU: [`exp_finite`] 16 (AVX-512F) or 8 (AVX2+FMA) lanes at a time, and
/// `1 / (1 + e^{−x})` from the hardware reciprocal estimate refined by one Newton step (cheaper
/// than a division, within the same accuracy bound). Every element of a call takes the same instruction
/// sequence, the last partial vector too (masked, or through a padded copy), so an element's
/// result does not depend on its position.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::CLAMP;

    /// Which instruction set [`silu`] uses on this CPU, if any.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Level {
        /// AVX-512F, 16 lanes.
        Avx512,
        /// AVX2 with FMA, 8 lanes.
        Avx2,
    }

    /// The widest level this CPU has (cached by the standard library's detection).
    pub(crate) fn level() -> Option<Level> {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Some(Level::Avx512)
        } else if super::has_avx2_fma() {
            Some(Level::Avx2)
        } else {
            None
        }
    }

    /// `out[i] = silu(x[i])` for `i < n` at the widest level the CPU has; `false` (writing
    /// nothing) when it has neither.
    ///
    /// # Safety
    /// `x` is readable and `out` writable for `n` elements; `out` may equal `x`.
    pub(crate) unsafe fn silu(out: *mut f32, x: *const f32, n: usize) -> bool {
        match level() {
            // SAFETY: the CPU has the level's instructions; the caller vouches for the memory.
            Some(level) => unsafe { silu_at(level, out, x, n) },
            None => return false,
        }
        true
    }

    /// [`silu`] at a given level.
    ///
    /// # Safety
    /// As [`silu`], and the CPU has `level`'s instructions.
    pub(crate) unsafe fn silu_at(level: Level, out: *mut f32, x: *const f32, n: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match level {
                Level::Avx512 => silu_avx512(out, x, n),
                Level::Avx2 => silu_avx2(out, x, n),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn silu_avx512(out: *mut f32, x: *const f32, n: usize) {
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n` elements are in bounds.
            unsafe { _mm512_storeu_ps(out.add(i), silu16(_mm512_loadu_ps(x.add(i)))) };
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1 << (n - i)) - 1;
            // SAFETY: the masked lanes are the `n - i` remaining, in-bounds elements.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, x.add(i));
                _mm512_mask_storeu_ps(out.add(i), mask, silu16(v));
            }
        }
    }

    /// SiLU of 16 lanes: the formulas of [`super::exp_finite`] and [`super::silu_scalar`],
    /// with `2ⁿ` applied by `scalef`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn silu16(v: __m512) -> __m512 {
        let set = _mm512_set1_ps;
        let neg = _mm512_sub_ps(set(0.0), v);
        // `max(neg, lo)` returns `lo` when `neg` is NaN, as `f32::max` does.
        let z = _mm512_min_ps(_mm512_max_ps(neg, set(-CLAMP)), set(CLAMP));
        let t = _mm512_fmadd_ps(z, set(std::f32::consts::LOG2_E), set(0.5));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let r = _mm512_fnmadd_ps(n, set(0.693_359_4), z);
        let r = _mm512_fnmadd_ps(n, set(-2.121_944_4e-4), r);
        let mut p = _mm512_fmadd_ps(set(1.987_569_1e-4), r, set(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, set(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, set(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, set(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, set(0.5));
        let e_r = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), set(1.0));
        let d = _mm512_add_ps(set(1.0), _mm512_scalef_ps(e_r, n));
        // 1/d: the 14-bit estimate, then one Newton step `r₀·(2 − d·r₀)`.
        let r0 = _mm512_rcp14_ps(d);
        let recip = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, set(2.0)));
        // 0 below −87.3, as in `silu_scalar`; "not less than" holds for NaN, which stays.
        _mm512_maskz_mul_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(v, set(-CLAMP)), v, recip)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu_avx2(out: *mut f32, x: *const f32, n: usize) {
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` elements are in bounds.
            unsafe { _mm256_storeu_ps(out.add(i), silu8(_mm256_loadu_ps(x.add(i)))) };
            i += 8;
        }
        if i < n {
            let mut lanes = [0.0_f32; 8];
            // SAFETY: the `n - i < 8` remaining elements are in bounds, `lanes` holds 8.
            unsafe {
                std::ptr::copy_nonoverlapping(x.add(i), lanes.as_mut_ptr(), n - i);
                _mm256_storeu_ps(lanes.as_mut_ptr(), silu8(_mm256_loadu_ps(lanes.as_ptr())));
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), out.add(i), n - i);
            }
        }
    }

    /// SiLU of eight lanes; the formulas of [`super::exp_finite`] and [`super::silu_scalar`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn silu8(v: __m256) -> __m256 {
        let set = _mm256_set1_ps;
        let neg = _mm256_sub_ps(set(0.0), v);
        let z = _mm256_min_ps(_mm256_max_ps(neg, set(-CLAMP)), set(CLAMP));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(z, set(std::f32::consts::LOG2_E), set(0.5)));
        let r = _mm256_fnmadd_ps(n, set(0.693_359_4), z);
        let r = _mm256_fnmadd_ps(n, set(-2.121_944_4e-4), r);
        let mut p = _mm256_fmadd_ps(set(1.987_569_1e-4), r, set(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, set(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, set(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, set(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, set(0.5));
        let e_r = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), set(1.0));
        // `n + 2²³ + 127` leaves the biased exponent in the low mantissa bits; the shift moves
        // it into the exponent field: `2ⁿ` without a float-to-int conversion.
        let biased = _mm256_add_ps(n, set(8_388_735.0));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(biased)));
        let d = _mm256_add_ps(set(1.0), _mm256_mul_ps(e_r, scale));
        // 1/d: the 12-bit estimate, then one Newton step `r₀·(2 − d·r₀)`.
        let r0 = _mm256_rcp_ps(d);
        let recip = _mm256_mul_ps(r0, _mm256_fnmadd_ps(d, r0, set(2.0)));
        // 0 below −87.3, as in `silu_scalar`; "not less than" holds for NaN, which stays.
        let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(v, set(-CLAMP));
        _mm256_and_ps(keep, _mm256_mul_ps(v, recip))
    }
}

/// `x / (1 + e^{−x})`, written so the compiler vectorises it (no library calls, no branches).
/// NaN stays NaN, +∞ gives +∞, and inputs below −87.3 give 0.
#[inline(always)]
pub fn silu_scalar(x: f32) -> f32 {
    // Below −87.3 the exponential is clamped and the exact value is below 1.1e-36 in
    // magnitude: return 0 there, as libtorch's `silu` does from about −104 on. (A tiny normal
    // number would do as well here, but the matrix products that read it would then meet
    // subnormal products, and each costs them a microcode assist.)
    if x < -CLAMP {
        return 0.0;
    }
    x / (1.0 + exp_finite(-x))
}

/// Where [`exp_finite`] clamps its argument: `e^{±87.3}` and its reciprocal are normal f32
/// numbers, so no step of SiLU meets a subnormal (which costs a microcode assist per
/// operation, hundreds of cycles).
const CLAMP: f32 = 87.3;

/// `e^x` for `x` clamped to `[−87.3, 87.3]`, so the result and its reciprocal are normal
/// numbers (NaN gives NaN): Cody–Waite reduction `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, then Cephes'
/// degree-7 minimax polynomial for `e^r` (relative error about 1 ulp) scaled by `2ⁿ` built in the
/// exponent bits.
#[inline(always)]
pub fn exp_finite(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-CLAMP, CLAMP);
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let p = 1.987_569_1e-4_f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 0.5);
    let e_r = (p * r).mul_add(r, r) + 1.0;
    // `n` is an integer in [-126, 126] here. Adding 2²³ + 127 leaves the biased exponent
    // `n + 127` (in [1, 253]) in the low mantissa bits, and the shift moves it into the
    // exponent field: `2ⁿ` without a float-to-int conversion, which would not vectorise.
    let biased = n + 8_388_735.0;
    let scale = f32::from_bits(biased.to_bits() << 23);
    e_r * scale
}

/// Elements per partial sum of a gradient's sum of squares (for gradient clipping): the sums of
/// these fixed blocks of a tensor's elements are added in block order, so the result does not
/// depend on how many threads, or which pass, computed them.
pub const SUM_BLOCK: usize = 4096;

/// `Σ x²` of one block in f64, with the widest instructions the CPU has.
pub fn squares(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { squares_avx2_fma(x) };
    }
    squares_elements(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn squares_avx2_fma(x: &[f32]) -> f64 {
    squares_elements(x)
}

/// Independent accumulators (so the compiler keeps them in vector lanes, and enough chains of
/// fused multiply-adds in flight to cover their latency), then their sum.
#[inline(always)]
fn squares_elements(x: &[f32]) -> f64 {
    const LANES: usize = 32;
    let mut acc = [0.0_f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f64::from(v).mul_add(f64::from(v), *a);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = f64::from(v).mul_add(f64::from(v), *a);
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_silu(x: f32) -> f64 {
        let x = f64::from(x);
        x / (1.0 + (-x).exp())
    }

    /// Every 997th f32 of either sign up to 90 in magnitude: within 3 ulp of the exact value
    /// (computed in f64) above −87.3, where `e^{−x}` is not clamped, and the result not subnormal; elsewhere within
    /// 1e-30 of 0 (the exact value is below 1.1e-36; it is 0 below −87.3); and the special values right.
    #[test]
    fn silu_scalar_is_within_three_ulp_of_exact() {
        let mut worst = 0.0_f64;
        for bits in (0..90.0_f32.to_bits()).step_by(997) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let got = silu_scalar(x);
                let exact = exact_silu(x);
                if x > -CLAMP && exact.abs() >= f64::from(f32::MIN_POSITIVE) {
                    let ulp = f64::from(f32::EPSILON) * exact.abs();
                    worst = worst.max((f64::from(got) - exact).abs() / ulp);
                } else {
                    assert!(f64::from(got).abs() < 1e-30, "silu({x}) = {got}");
                }
            }
        }
        assert!(worst <= 3.0, "worst error {worst} ulp");
        assert!(silu_scalar(f32::NAN).is_nan());
        assert_eq!(silu_scalar(f32::INFINITY), f32::INFINITY);
        assert_eq!(silu_scalar(0.0), 0.0);
        assert_eq!(silu_scalar(1e4), 1e4);
        assert!(silu_scalar(-1e4).abs() < 1e-30);
        assert!(silu_scalar(-3e38).abs() < 1e-30);
        assert!(silu_scalar(f32::NEG_INFINITY).abs() < 1e-30);
    }

    /// Each vector level this CPU has, over the same sweep (an odd length, so the masked or
    /// padded last vector runs too): within 4 ulp of exact (the reciprocal estimate and its
    /// Newton step add about one), the special values right, and a value's result the same at
    /// every position.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_levels_are_within_four_ulp_of_exact() {
        use simd::{Level, silu_at};
        let mut xs: Vec<f32> = (0..90.0_f32.to_bits())
            .step_by(4999)
            .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
            .collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -3e38,
            3e38,
            -1e4,
            -87.3,
            -87.4,
        ]);
        let levels = [
            (
                Level::Avx512,
                std::arch::is_x86_feature_detected!("avx512f"),
            ),
            (Level::Avx2, has_avx2_fma()),
        ];
        for (level, available) in levels {
            if !available {
                continue;
            }
            let mut out = vec![0.0_f32; xs.len()];
            // SAFETY: the CPU has `level`; both buffers hold `xs.len()` elements.
            unsafe { silu_at(level, out.as_mut_ptr(), xs.as_ptr(), xs.len()) };
            let mut worst = 0.0_f64;
            for (&x, &got) in xs.iter().zip(&out) {
                let exact = exact_silu(x);
                if x.is_nan() {
                    assert!(got.is_nan(), "{level:?}: silu(NaN) = {got}");
                } else if x == f32::INFINITY {
                    assert_eq!(got, x, "{level:?}");
                } else if x > -CLAMP && exact.abs() >= f64::from(f32::MIN_POSITIVE) {
                    let ulp = f64::from(f32::EPSILON) * exact.abs();
                    worst = worst.max((f64::from(got) - exact).abs() / ulp);
                } else {
                    assert!(got.abs() < 1e-30, "{level:?}: silu({x}) = {got}");
                }
            }
            assert!(worst <= 4.0, "{level:?}: worst error {worst} ulp");
            let mut shifted = vec![0.0_f32; xs.len() - 3];
            // SAFETY: as above, for the sweep without its first three elements.
            unsafe { silu_at(level, shifted.as_mut_ptr(), xs[3..].as_ptr(), xs.len() - 3) };
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(
                shifted.iter().zip(&out[3..]).all(|(&a, &b)| same(a, b)),
                "{level:?}"
            );
        }
    }

    #[test]
    fn exp_finite_is_within_two_ulp_and_clamps() {
        for i in -8730..=8730 {
            let x = i as f32 / 100.0;
            let exact = f64::from(x).exp();
            let got = f64::from(exp_finite(x));
            let ulp = f64::from(f32::EPSILON) * exact;
            assert!(
                (got - exact).abs() <= 2.0 * ulp,
                "exp({x}) = {got}, exact {exact}"
            );
        }
        assert_eq!(exp_finite(1000.0), exp_finite(87.3));
        assert!(exp_finite(f32::NAN).is_nan());
        assert!(exp_finite(-1000.0) >= f32::MIN_POSITIVE);
    }

    /// The tensor entry points agree with libtorch's `silu` to within a few ulp on contiguous,
    /// channels-last and gappy inputs, leave grad-requiring inputs to libtorch, and only the
    /// owned form overwrites its input.
    #[test]
    fn silu_matches_libtorch_on_every_layout() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([3, 5, 7, 9], f) * 6.0;
        let layouts = [
            x.shallow_clone(),
            x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
            x.narrow(3, 1, 5),
        ];
        for x in layouts {
            let expected = x.silu();
            let tol = |t: &Tensor| {
                (t - &expected)
                    .abs()
                    .le_tensor(&(expected.abs() * 4e-7 + 1e-37))
            };
            let got = silu(&x);
            assert_eq!(got.stride(), expected.stride());
            assert!(bool::try_from(tol(&got).all()).expect("bool"));
            let before = x.copy();
            let owned = silu_owned(x.copy());
            assert!(bool::try_from(tol(&owned).all()).expect("bool"));
            assert!(x.equal(&before), "the borrowed input is untouched");
        }
        // Small tensors run on the calling thread, large ones are split over libtorch's
        // OpenMP team: in place either way, and the split changes no bit.
        for n in [64, 3 * omp_team::GRAIN as i64 + 5] {
            let input = Tensor::randn([n], f) * 6.0;
            let expected = input.silu();
            let mut serial: Vec<f32> = Vec::try_from(&input).expect("f32");
            // SAFETY: `serial` holds `n` elements, read and written in place.
            unsafe { silu_serial(serial.as_mut_ptr(), serial.as_ptr(), serial.len()) };
            let out = silu_owned(input.shallow_clone());
            assert_eq!(out.data_ptr(), input.data_ptr(), "dense f32: in place");
            assert!(out.allclose(&expected, 4e-7, 1e-37, false));
            let got: Vec<f32> = Vec::try_from(&out).expect("f32");
            assert!(
                got.iter()
                    .zip(&serial)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
            assert!(silu(&expected).equal(&silu_owned(expected.copy())));
        }
    }

    #[test]
    fn silu_with_row_bias_matches_the_two_step_form() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        // Small (one thread) and large (rows split over the team), and a bias of wrong width.
        for rows in [3_i64, 3 * omp_team::GRAIN as i64 / 256 + 7] {
            let x = Tensor::randn([rows, 256], f) * 5.0;
            let row = Tensor::randn([1, 256], f);
            let expected = silu_owned(&x + &row);
            let got = silu_with_row_bias_owned(x.copy(), &row);
            assert!(
                got.equal(&expected),
                "rows {rows}: the same sums and the same kernel"
            );
        }
        let x = Tensor::randn([4, 6], f);
        let bad = Tensor::randn([6], f).narrow(0, 0, 1);
        let got = silu_with_row_bias_owned(x.copy(), &bad);
        assert!(
            got.allclose(&(&x + &bad).silu(), 4e-7, 1e-37, false),
            "broadcast fallback"
        );
    }

    #[test]
    fn grad_mode_is_read_without_changing_it() {
        assert!(grad_enabled());
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(records_grad([&x, &p]));
        assert!(!records_grad([&x]));
        {
            let _guard = tch::no_grad_guard();
            assert!(!grad_enabled());
            assert!(!grad_enabled());
            assert!(!records_grad([&x, &p]));
        }
        assert!(grad_enabled());
    }

    #[test]
    fn silu_backward_matches_libtorch() {
        let _guard = tch::no_grad_guard();
        let f = (Kind::Float, Device::Cpu);
        for shape in [vec![7_i64, 33], vec![3 * omp_team::GRAIN as i64 + 9]] {
            let z = Tensor::randn(&shape, f) * 8.0;
            let g = Tensor::randn(&shape, f);
            let expected = z.silu_backward(&g);
            let got = silu_backward(&g, &z);
            // Relative to the result, plus a few ulp of ∂h where σ(z)·(1 + z·(1 − σ(z))) crosses
            // zero (z ≈ −1.28) and the result's own size says nothing about the rounding.
            let close = (&got - &expected)
                .abs()
                .le_tensor(&(expected.abs() * 2e-6 + g.abs() * 1e-6 + 1e-30));
            assert!(bool::try_from(close.all()).expect("bool"), "{shape:?}");
        }
        // Far out of range: the limits 0 (z → −∞) and ∂h (z → +∞); NaN stays NaN.
        let z = Tensor::from_slice(&[-1000.0_f32, 1000.0, f32::NAN, 0.0]);
        let g = Tensor::from_slice(&[2.0_f32, 2.0, 2.0, 2.0]);
        let got: Vec<f32> = Vec::try_from(silu_backward(&g, &z)).expect("f32");
        assert!(got[0].abs() < 1e-30, "{got:?}");
        assert_eq!(got[1], 2.0);
        assert!(got[2].is_nan());
        assert_eq!(got[3], 1.0, "σ(0) = 1/2");
        // Layouts that differ go to libtorch, with its result.
        let z = Tensor::randn([4, 6], f);
        let g = Tensor::randn([6, 4], f).tr();
        assert!(silu_backward(&g, &z).equal(&z.silu_backward(&g)));
    }

    #[test]
    fn grad_requiring_inputs_keep_their_autograd_record() {
        let x = Tensor::randn([10], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = silu(&x);
        assert!(y.requires_grad());
        y.sum(Kind::Float).backward();
        let expected = {
            let s = x.detach().sigmoid();
            &s * (1.0 + x.detach() * (1.0 - &s))
        };
        assert!(x.grad().allclose(&expected, 1e-6, 1e-6, false));
        let z = silu_owned(x.detach() * 1.0);
        assert!(!z.requires_grad());
    }
}
