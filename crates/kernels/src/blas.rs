//! Single-precision matrix products straight through the BLAS that libtorch carries (MKL's
//! `sgemm_` in the PyPI wheels), for the hand-written training pass of the small MLPs.
//!
//! At the 2-D toy's sizes (`[25, 256] × [256, 256]`) a libtorch `addmm`/`mm` adds dispatch,
//! output allocation and shape checks, a sizeable share of so small a product, around the
//! same BLAS call, and
//! the bias and accumulation steps around it are separate operations. [`gemm`] calls `sgemm_`
//! on the tensors' memory with the accumulation (`β = 1`) folded in.
//!
//! The routine is looked up when first needed, among the symbols already loaded into the
//! process (libtorch brings it), and checked once on a known product; where there is none
//! (a libtorch built without a Fortran-interface BLAS, another OS) [`gemm`] runs libtorch's own
//! `mm`/`addmm_` instead, with the same result up to the order of the sums.

use tch::{Device, Kind, Tensor};

use std::ops::Range;

use crate::cpu::{is_contiguous_cpu_f32, records_grad};
use crate::omp_team::{self, SyncPtr};

/// Largest product (multiply-adds `m·n·k`) that [`gemm`] splits over the OpenMP team itself.
pub const SPLIT_MAX_MACS: i64 = 1 << 22;

/// Fewest rows (or columns) of the output per thread when [`gemm`] splits a product.
const SPLIT_GRAIN: usize = 32;

/// Whether [`gemm`] calls the BLAS directly (`false`: through libtorch's operations).
pub fn direct() -> bool {
    runtime::sgemm().is_some()
}

/// `c ← op(a)·op(b)` (or `c ← c + op(a)·op(b)` with `accumulate`), where `op(x)` is `xᵀ` when
/// its flag is set; all three 2-D f32 CPU tensors, `c` contiguous and `[m, n]` for `op(a)`
/// `[m, k]` and `op(b)` `[k, n]`.
///
/// # Panics
/// On shapes that do not multiply, or a `c` that is not a contiguous f32 CPU matrix: these are
/// programming errors of the caller.
pub fn gemm(c: &Tensor, a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool, accumulate: bool) {
    let dims = |t: &Tensor, trans: bool| {
        let s = t.size();
        assert_eq!(s.len(), 2, "gemm takes matrices, not {s:?}");
        if trans { (s[1], s[0]) } else { (s[0], s[1]) }
    };
    let ((m, k), (k2, n)) = (dims(a, trans_a), dims(b, trans_b));
    assert_eq!(k, k2, "gemm: inner sizes {k} and {k2} differ");
    assert_eq!(c.size(), [m, n], "gemm: output of the wrong shape");
    assert!(
        is_f32_cpu_matrix(c) && c.is_contiguous(),
        "gemm: output not contiguous f32"
    );
    let sizes_positive = m > 0 && n > 0 && k > 0;
    if let (true, Some(a), Some(b), Some(c), true) = (
        direct(),
        RawMatrix::of(a),
        RawMatrix::of(b),
        RawMatrix::of(c),
        sizes_positive,
    ) {
        // One product of the block `rows × cols` of C.
        // SAFETY: the shapes and leading dimensions describe the three tensors' memory
        // (checked above) and every block lies inside them; `c` does not alias `a` or `b` (it
        // is written while they are read, as in libtorch's `mm_out`, whose callers guarantee
        // the same); blocks of different threads do not overlap.
        let block = |rows, cols| unsafe {
            gemm_block(c, a, trans_a, b, trans_b, accumulate, rows, cols);
        };
        if m * n * k <= SPLIT_MAX_MACS {
            // Small products: halves of the output on the OpenMP team's threads, each one
            // single-threaded BLAS call (MKL's own threading costs more than the product at
            // the MLPs' sizes). The larger side of C is split.
            let split_rows = m >= n;
            let len = if split_rows { m } else { n } as usize;
            omp_team::for_each_chunk_grain(len, 16, SPLIT_GRAIN, |part| {
                let part = part.start as i64..part.end as i64;
                if split_rows {
                    block(part, 0..n);
                } else {
                    block(0..m, part);
                }
            });
        } else {
            block(0..m, 0..n);
        }
        return;
    }
    let op = |t: &Tensor, trans: bool| if trans { t.tr() } else { t.shallow_clone() };
    let (a, b) = (op(a, trans_a), op(b, trans_b));
    let mut c = c.shallow_clone();
    if accumulate {
        let _ = c.addmm_(&a, &b);
    } else {
        let _ = a.mm_out(&c, &b);
    }
}

/// A row-major f32 CPU matrix by address, shape and row stride: what the threads of a parallel
/// region share to multiply or update their own blocks of it (a `Tensor` may not cross
/// threads). A vector of `n` elements is a `[1, n]` matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMatrix {
    ptr: SyncPtr<f32>,
    /// Number of rows.
    pub rows: i64,
    /// Number of columns.
    pub cols: i64,
    /// Elements from one row to the next (at least `cols`).
    pub ld: i64,
}

impl RawMatrix {
    /// The memory of `t`: a 2-D f32 CPU tensor with unit column stride and a row stride of at
    /// least its width, or a contiguous f32 CPU vector (as one row); `None` for anything else.
    pub fn of(t: &Tensor) -> Option<Self> {
        if !(t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float) {
            return None;
        }
        let ptr = SyncPtr(t.data_ptr() as *mut f32);
        match (&t.size()[..], &t.stride()[..]) {
            (&[n], &[stride]) if stride == 1 || n <= 1 => Some(Self {
                ptr,
                rows: 1,
                cols: n,
                ld: n.max(1),
            }),
            (&[rows, cols], &[ld, 1]) if ld >= cols.max(1) => Some(Self {
                ptr,
                rows,
                cols,
                ld,
            }),
            _ => None,
        }
    }

    /// A fresh contiguous `[rows, cols]` f32 CPU matrix and its memory.
    pub fn new_matrix(rows: i64, cols: i64) -> (Tensor, Self) {
        let t = Tensor::empty([rows, cols], (Kind::Float, Device::Cpu));
        let ptr = SyncPtr(t.data_ptr() as *mut f32);
        let raw = Self {
            ptr,
            rows,
            cols,
            ld: cols.max(1),
        };
        (t, raw)
    }

    /// The address of the first element (to match the matrix with its tensor's memory).
    pub fn address(&self) -> usize {
        self.ptr.get() as usize
    }

    /// Rows `rows` of a matrix without padding between rows (`ld == cols`) as one slice;
    /// `None` for a padded one.
    ///
    /// # Safety
    /// As [`RawMatrix::row`], for every element of those rows.
    pub(crate) unsafe fn rows(&self, rows: Range<i64>) -> Option<&[f32]> {
        let n = ((rows.end - rows.start) * self.cols) as usize;
        let at = (rows.start * self.ld) as usize;
        // SAFETY: the caller vouches for the rows, which are contiguous when `ld == cols`.
        (self.ld == self.cols).then(|| unsafe { self.ptr.slice(at..at + n) })
    }

    /// The elements `cols` of row `row`.
    ///
    /// # Safety
    /// `row` and `cols` lie inside the matrix, whose tensor is alive, and nothing writes them
    /// while the slice lives.
    pub(crate) unsafe fn row(&self, row: i64, cols: Range<i64>) -> &[f32] {
        let at = (row * self.ld + cols.start) as usize;
        // SAFETY: the caller vouches for the range.
        unsafe { self.ptr.slice(at..at + (cols.end - cols.start) as usize) }
    }

    /// The elements `cols` of row `row`, writable.
    ///
    /// # Safety
    /// As [`RawMatrix::row`], and nothing else reads or writes them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn row_mut(&self, row: i64, cols: Range<i64>) -> &mut [f32] {
        let at = (row * self.ld + cols.start) as usize;
        // SAFETY: the caller vouches for the range.
        unsafe {
            self.ptr
                .slice_mut(at..at + (cols.end - cols.start) as usize)
        }
    }
}

/// The block `rows × cols` of `c ← op(a)·op(b)` (of `c ← c + op(a)·op(b)` with `accumulate`),
/// `op(x)` being `xᵀ` when its flag is set: one `sgemm_` call on the calling thread (MKL runs
/// single-threaded inside an OpenMP parallel region), so that the threads of a region can each
/// compute their own block. Empty blocks do nothing.
///
/// # Safety
/// [`direct`] holds; `op(a)` is `[c.rows, k]` and `op(b)` `[k, c.cols]` with `k ≥ 1`; `rows` and `cols` lie
/// inside `c`; the three tensors are alive; `c` overlaps neither `a` nor `b`, and nothing else
/// reads or writes this block of `c` meanwhile.
///
/// # Panics
/// When the BLAS is not reachable.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block(
    c: RawMatrix,
    a: RawMatrix,
    trans_a: bool,
    b: RawMatrix,
    trans_b: bool,
    accumulate: bool,
    rows: Range<i64>,
    cols: Range<i64>,
) {
    let sgemm = runtime::sgemm().expect("gemm_block: no BLAS (check blas::direct first)");
    let k = if trans_a { a.rows } else { a.cols };
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    // op(A)'s rows `rows`: rows of A, or columns of Aᵀ's storage; op(B)'s columns `cols`:
    // columns of B, or rows of Bᵀ's storage.
    let a_at = if trans_a {
        rows.start
    } else {
        rows.start * a.ld
    };
    let b_at = if trans_b {
        cols.start * b.ld
    } else {
        cols.start
    };
    let c_at = rows.start * c.ld + cols.start;
    let beta = if accumulate { 1.0 } else { 0.0 };
    // Row-major `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, and a row-major matrix
    // read column-major is its transpose: pass B first, flags unchanged.
    // SAFETY: the caller vouches for the shapes, strides and memory.
    unsafe {
        sgemm.call(
            trans_b,
            trans_a,
            [cols.end - cols.start, rows.end - rows.start, k],
            b.ptr.get().add(b_at as usize),
            b.ld,
            a.ptr.get().add(a_at as usize),
            a.ld,
            beta,
            c.ptr.get().add(c_at as usize),
            c.ld,
        );
    }
}

/// `c ← a·b` for row-major f32 matrices in raw memory: `a` `[m, k]` with row stride `lda`, `b`
/// `[k, n]` with row stride `ldb`, `c` `[m, n]` with row stride `ldc`, one `sgemm_` call (on one
/// thread when called inside an OpenMP parallel region, as MKL does there). For kernels that
/// multiply parts of their own buffers ([`crate::winograd`]).
///
/// # Safety
/// The three matrices lie in readable (`a`, `b`) and writable (`c`) memory of the sizes their
/// shapes and strides describe, `c` overlaps neither input, strides are at least the row
/// lengths, and [`direct`] holds.
///
/// # Panics
/// When the BLAS is not reachable ([`direct`] is false).
pub(crate) unsafe fn gemm_row_major(
    [m, n, k]: [i64; 3],
    a: *const f32,
    lda: i64,
    b: *const f32,
    ldb: i64,
    c: *mut f32,
    ldc: i64,
) {
    let sgemm = runtime::sgemm().expect("gemm_row_major: no BLAS (check blas::direct first)");
    if m == 0 || n == 0 {
        return;
    }
    // Row-major `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ` (see `gemm`).
    // SAFETY: the caller vouches for the memory.
    unsafe { sgemm.call(false, false, [n, m, k], b, ldb, a, lda, 0.0, c, ldc) };
}

/// `x·Wᵀ + b` of a linear layer for a contiguous 2-D f32 CPU input at inference, as one BLAS
/// call onto the bias rows (no libtorch dispatch, no output reshuffling); `None` where that does
/// not apply (autograd recording, other devices, kinds, shapes or layouts, no bias, no BLAS).
pub fn linear_inference(x: &Tensor, layer: &tch::nn::Linear) -> Option<Tensor> {
    let bias = layer.bs.as_ref()?;
    let fits = x.dim() == 2
        && is_contiguous_cpu_f32(x)
        && is_contiguous_cpu_f32(&layer.ws)
        && is_contiguous_cpu_f32(bias)
        && x.size()[1] == layer.ws.size()[1]
        && bias.numel() as i64 == layer.ws.size()[0];
    if !fits || records_grad([x, &layer.ws, bias]) || !direct() {
        return None;
    }
    let out = Tensor::empty(
        [x.size()[0], layer.ws.size()[0]],
        (Kind::Float, Device::Cpu),
    );
    broadcast_rows(&out, &[Some(bias)]);
    gemm(&out, x, false, &layer.ws, true, true);
    Some(out)
}

/// The starting contents of a `β = 1` product with a bias per column (a linear layer's `[N,
/// out]` output): the sum of `rows` (each a contiguous f32 CPU vector of `out`'s width, or
/// absent) written into every row of the fresh contiguous f32 matrix `out`; zeros when all are
/// absent.
///
/// # Panics
/// When `out` is not a contiguous f32 CPU matrix or a row not a contiguous f32 CPU vector of
/// its width.
pub fn broadcast_rows(out: &Tensor, rows: &[Option<&Tensor>]) {
    assert!(
        out.dim() == 2 && is_contiguous_cpu_f32(out),
        "broadcast_rows: output"
    );
    let width = out.size()[1] as usize;
    let mut sum = vec![0.0_f32; width];
    for row in rows.iter().flatten() {
        assert!(
            is_contiguous_cpu_f32(row) && row.numel() == width,
            "broadcast_rows: a row of {} elements for width {width}",
            row.numel()
        );
        // SAFETY: a contiguous f32 CPU vector of `width` elements (checked), read only.
        let row = unsafe { std::slice::from_raw_parts(row.data_ptr() as *const f32, width) };
        sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
    }
    // SAFETY: `out` is a contiguous f32 matrix (checked); the caller passes a fresh one.
    let out = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, out.numel()) };
    for chunk in out.chunks_exact_mut(width.max(1)) {
        chunk.copy_from_slice(&sum);
    }
}

/// The starting contents of a `β = 1` product with a bias per row (a convolution's `[out,
/// H·W]` output): `values[r]` (a contiguous f32 CPU vector, one value per row) in every element
/// of row `r` of the fresh contiguous f32 matrix `rows`, plus the matching element of `plus` (a
/// contiguous f32 CPU tensor of as many elements, not `rows`) if given.
///
/// # Panics
/// When a tensor is not contiguous f32 on the CPU or the sizes do not match.
pub fn broadcast_columns(rows: &Tensor, values: &Tensor, plus: Option<&Tensor>) {
    assert!(
        rows.dim() == 2 && is_contiguous_cpu_f32(rows),
        "broadcast_columns: output"
    );
    let (n_rows, width) = (rows.size()[0] as usize, rows.size()[1] as usize);
    assert!(
        is_contiguous_cpu_f32(values) && values.numel() == n_rows,
        "broadcast_columns: one value per row"
    );
    // SAFETY: `rows` is a contiguous f32 CPU matrix and `values` a contiguous f32 CPU vector
    // of `n_rows` elements (both checked); the caller passes a fresh `rows`.
    let (dst, src) = unsafe {
        (
            std::slice::from_raw_parts_mut(rows.data_ptr() as *mut f32, n_rows * width),
            std::slice::from_raw_parts(values.data_ptr() as *const f32, n_rows),
        )
    };
    match plus {
        None => {
            for (row, &v) in dst.chunks_exact_mut(width).zip(src) {
                row.fill(v);
            }
        }
        Some(plus) => {
            assert!(
                is_contiguous_cpu_f32(plus) && plus.numel() == n_rows * width,
                "broadcast_columns: one addend per element"
            );
            // SAFETY: a contiguous f32 CPU tensor of that many elements (checked), read only,
            // and not `rows` (which is fresh).
            let plus = unsafe {
                std::slice::from_raw_parts(plus.data_ptr() as *const f32, n_rows * width)
            };
            for ((row, add), &v) in dst
                .chunks_exact_mut(width)
                .zip(plus.chunks_exact(width))
                .zip(src)
            {
                for (d, a) in row.iter_mut().zip(add) {
                    *d = a + v;
                }
            }
        }
    }
}

fn is_f32_cpu_matrix(t: &Tensor) -> bool {
    t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float && t.dim() == 2
}

#[cfg(target_os = "linux")]
mod runtime {
    use std::ffi::{c_char, c_void};
    use std::sync::OnceLock;

    /// Fortran BLAS `sgemm_(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`;
    /// every argument by reference, column-major.
    type Sgemm = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        *const i64,
        *const i64,
        *const i64,
        *const f32,
        *const f32,
        *const i64,
        *const f32,
        *const i64,
        *const f32,
        *mut f32,
        *const i64,
    );

    /// The loaded routine.
    #[derive(Clone, Copy)]
    pub(super) struct Routine(Sgemm);

    unsafe extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    /// The routine, looked up and checked once; `None` when none is loaded or it fails the
    /// check.
    pub(super) fn sgemm() -> Option<Routine> {
        static ROUTINE: OnceLock<Option<Routine>> = OnceLock::new();
        *ROUTINE.get_or_init(|| {
            // Load libtorch (and the BLAS in it) before looking.
            let _ = tch::get_num_threads();
            // SAFETY: `dlsym` only reads the name (`RTLD_DEFAULT` is glibc's null handle).
            let ptr = unsafe { dlsym(std::ptr::null_mut(), c"sgemm_".as_ptr()) };
            if ptr.is_null() {
                return None;
            }
            // SAFETY: `sgemm_` is the reference BLAS entry point with this signature.
            let routine = Routine(unsafe { std::mem::transmute::<*mut c_void, Sgemm>(ptr) });
            routine.passes_check().then_some(routine)
        })
    }

    impl Routine {
        /// Column-major `c ← op(a)·op(b) + β·c` with `[m, n, k]` sizes.
        ///
        /// Each integer is passed as a 64-bit value: a 32-bit-integer BLAS (LP64, what PyTorch
        /// links) reads its low half, which on little-endian machines is the value, and a
        /// 64-bit-integer one (ILP64) reads all of it.
        ///
        /// # Safety
        /// The sizes and leading dimensions describe readable `a`, `b` and writable `c`.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn call(
            self,
            trans_a: bool,
            trans_b: bool,
            [m, n, k]: [i64; 3],
            a: *const f32,
            lda: i64,
            b: *const f32,
            ldb: i64,
            beta: f32,
            c: *mut f32,
            ldc: i64,
        ) {
            let flag = |t: bool| if t { c"T".as_ptr() } else { c"N".as_ptr() };
            let alpha = 1.0_f32;
            // SAFETY: forwarded from the caller; every scalar lives across the call.
            unsafe {
                (self.0)(
                    flag(trans_a),
                    flag(trans_b),
                    &m,
                    &n,
                    &k,
                    &alpha,
                    a,
                    &lda,
                    b,
                    &ldb,
                    &beta,
                    c,
                    &ldc,
                )
            }
        }

        /// Whether the routine computes a known product exactly (small integers), with both
        /// transpose flags and accumulation.
        fn passes_check(self) -> bool {
            if cfg!(target_endian = "big") {
                return false;
            }
            // Column-major A = [[1, 2, 3], [4, 5, 6]] (2×3), B = Aᵀ read as 3×2.
            let a = [1.0_f32, 4.0, 2.0, 5.0, 3.0, 6.0];
            let mut c = [1.0_f32; 4];
            // SAFETY: A is 2×3 with lda 2; Aᵀ (by flag) 3×2; C is 2×2 with ldc 2.
            unsafe {
                self.call(
                    false,
                    true,
                    [2, 2, 3],
                    a.as_ptr(),
                    2,
                    a.as_ptr(),
                    2,
                    1.0,
                    c.as_mut_ptr(),
                    2,
                )
            };
            // A·Aᵀ = [[14, 32], [32, 77]], plus the ones already in C.
            c == [15.0, 33.0, 33.0, 78.0]
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod runtime {
    /// No BLAS is looked up off Linux: [`super::gemm`] goes through libtorch.
    #[derive(Clone, Copy)]
    pub(super) enum Routine {}

    pub(super) fn sgemm() -> Option<Routine> {
        None
    }

    impl Routine {
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn call(
            self,
            _: bool,
            _: bool,
            _: [i64; 3],
            _: *const f32,
            _: i64,
            _: *const f32,
            _: i64,
            _: f32,
            _: *mut f32,
            _: i64,
        ) {
            match self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn libtorchs_blas_is_found() {
        assert!(direct(), "the PyPI libtorch exports MKL's sgemm_");
    }

    /// Every transpose combination, fresh and accumulated, on strided (row-padded) inputs,
    /// against libtorch's `mm`: at a size below the split, one split by rows of the output and
    /// one split by its columns (unaligned sizes: the last part is short).
    #[test]
    fn products_match_libtorch() {
        let f = (Kind::Float, Device::Cpu);
        let sizes = [(7, 5, 3), (97, 25, 70), (25, 40, 131)];
        let flags = [(false, false), (true, false), (false, true), (true, true)];
        for ((m, k, n), (trans_a, trans_b)) in sizes
            .into_iter()
            .flat_map(|size| flags.map(|flag| (size, flag)))
        {
            let a_shape = if trans_a { [k, m] } else { [m, k] };
            let b_shape = if trans_b { [n, k] } else { [k, n] };
            // Row-padded: a view with a leading dimension larger than its width.
            let a = Tensor::randn([a_shape[0], a_shape[1] + 2], f).narrow(1, 0, a_shape[1]);
            let b = Tensor::randn(b_shape, f);
            let op = |t: &Tensor, tr: bool| if tr { t.tr() } else { t.shallow_clone() };
            let expected = op(&a, trans_a).mm(&op(&b, trans_b));
            let c = Tensor::full([m, n], f64::NAN, f);
            gemm(&c, &a, trans_a, &b, trans_b, false);
            assert!(
                c.allclose(&expected, 1e-5, 1e-5, false),
                "{trans_a} {trans_b}"
            );
            gemm(&c, &a, trans_a, &b, trans_b, true);
            assert!(
                c.allclose(&(&expected * 2.0), 1e-5, 1e-5, false),
                "{trans_a} {trans_b}"
            );
        }
    }

    /// Inputs the BLAS cannot read as row-major (a column-major view passed without its flag)
    /// take libtorch's path, with the same result.
    #[test]
    fn other_layouts_fall_back_to_libtorch() {
        let f = (Kind::Float, Device::Cpu);
        let a = Tensor::randn([5, 7], f).tr(); // [7, 5], column-major
        let b = Tensor::randn([5, 3], f);
        let expected = a.mm(&b);
        let c = Tensor::zeros([7, 3], f);
        gemm(&c, &a, false, &b, false, false);
        assert!(c.allclose(&expected, 1e-5, 1e-5, false));
        gemm(&c, &a, false, &b, false, true);
        assert!(c.allclose(&(&expected * 2.0), 1e-5, 1e-5, false));
    }

    #[test]
    fn linear_inference_matches_the_layer() {
        use tch::nn::Module;
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let layer = tch::nn::linear(vs.root(), 7, 5, Default::default());
        let x = Tensor::randn([3, 7], (Kind::Float, Device::Cpu));
        assert!(
            linear_inference(&x, &layer).is_none(),
            "grad mode on, weights require grad"
        );
        let _guard = tch::no_grad_guard();
        let ours = linear_inference(&x, &layer).expect("applies");
        assert!(ours.allclose(&layer.forward(&x), 1e-5, 1e-5, false));
        assert!(linear_inference(&x.tr(), &layer).is_none(), "wrong width");
    }

    #[test]
    fn empty_products_zero_or_keep_the_output() {
        let f = (Kind::Float, Device::Cpu);
        let a = Tensor::zeros([3, 0], f);
        let b = Tensor::zeros([0, 2], f);
        let c = Tensor::ones([3, 2], f);
        gemm(&c, &a, false, &b, false, true);
        assert!(c.equal(&Tensor::ones([3, 2], f)));
        gemm(&c, &a, false, &b, false, false);
        assert!(c.equal(&Tensor::zeros([3, 2], f)));
    }

    #[test]
    #[should_panic(expected = "inner sizes")]
    fn mismatched_shapes_are_refused() {
        let f = (Kind::Float, Device::Cpu);
        gemm(
            &Tensor::zeros([2, 2], f),
            &Tensor::zeros([2, 3], f),
            false,
            &Tensor::zeros([2, 2], f),
            false,
            false,
        );
    }
}
