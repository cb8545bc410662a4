//! Batch-1 inference convolutions on the CPU: the shapes libtorch serves worst through
//! difflab's im2col and the BLAS, or Winograd's `F(2×2, 3×3)`.
//!
//! For a batch-1 f32 input of at most 20480 elements and a kernel of at most 3×3, libtorch's
//! `conv2d` skips oneDNN (`use_mkldnn` in ATen's `ConvUtils.h`) for `slow_conv2d`, whose im2col
//! runs on one thread (its parallel loop is over the batch) before the BLAS product, and can
//! cost more than the product itself. [`ConvKernel::forward`] takes those
//! shapes (the lower levels of a UNet sampling one image) and batch-1 1×1 convolutions (which
//! need no im2col at all) itself: the columns written by difflab's loop on libtorch's OpenMP
//! team ([`crate::omp_team`]), then one `sgemm_` ([`crate::blas::gemm`]) onto the bias rows.
//! 3×3 stride-1 kernels at 8–128 px take Winograd's `F(2×2, 3×3)` instead where the CPU has
//! its AVX-512 kernels ([`crate::winograd`]). Everything else — training, batches, larger
//! inputs, channels-last weights — stays on libtorch, and so does every call where autograd
//! must see the operation.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor, nn};

use crate::blas;
use crate::cpu::{is_contiguous_cpu_f32, records_grad};
use crate::omp_team::{self, SyncPtr};
use crate::winograd::{self, WinogradF2};

/// Largest batch-1 input (elements) libtorch sends to `slow_conv2d` rather than oneDNN.
pub const SLOW_PATH_MAX_INPUT: i64 = 20_480;

/// Largest batch-1 input (elements) whose 1×1 convolution difflab's path takes (above it
/// oneDNN is faster; see docs/performance.md).
pub const POINTWISE_MAX_INPUT: i64 = 131_072;

/// difflab's paths for one convolution layer with a square kernel, equal stride and zero
/// padding on both axes: its weight `[out, in, k, k]` and bias `[out]` (sharing storage with
/// the layer's variables, so updates are seen) and the Winograd transform of the weight.
#[derive(Debug)]
pub struct ConvKernel {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: i64,
    stride: i64,
    padding: i64,
    /// The Winograd-transformed weight of the last [`ConvPath::Winograd`] call, reused while
    /// the weight is the same tensor at the same version (an optimizer step, an EMA copy or a
    /// checkpoint load all bump the version).
    winograd_weight: Mutex<Option<TransformedWeight>>,
}

/// A weight's Winograd transform and the state of the weight it was computed from.
#[derive(Debug)]
struct TransformedWeight {
    data: usize,
    version: i64,
    u: Tensor,
}

/// Which implementation [`ConvKernel::forward`] uses for an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// libtorch's `conv2d` (oneDNN, `slow_conv2d`, cuDNN, … as libtorch picks).
    Libtorch,
    /// difflab's im2col (skipped for 1×1) and one BLAS product.
    Im2colGemm,
    /// difflab's Winograd `F(2×2, 3×3)` ([`crate::winograd`]): 3×3 kernels, stride 1.
    Winograd,
}

impl ConvKernel {
    /// The kernels of `layer` (weight `[out, in, k, k]`), with `stride` and `padding`.
    pub fn new(layer: &nn::Conv2D, stride: i64, padding: i64) -> Self {
        Self {
            kernel: layer.ws.size()[2],
            weight: layer.ws.shallow_clone(),
            bias: layer.bs.as_ref().map(Tensor::shallow_clone),
            stride,
            padding,
            winograd_weight: Mutex::new(None),
        }
    }

    /// `residual + conv(x)` (or `conv(x)`) through difflab's fastest path for `x`
    /// ([`ConvKernel::path_for`]); `None` where that is libtorch's. On difflab's paths the
    /// residual and the bias are written into the output first and the product accumulated
    /// onto them, saving the separate addition.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Option<Tensor> {
        match self.path_for(x) {
            ConvPath::Libtorch => None,
            path => self.forward_on_path(x, path, residual),
        }
    }

    /// The convolution through a given path (for comparisons and tests), plus `residual`;
    /// `None` where that path does not apply to `x` (or the residual is not the output's
    /// shape, contiguous f32 CPU).
    pub fn forward_on_path(
        &self,
        x: &Tensor,
        path: ConvPath,
        residual: Option<&Tensor>,
    ) -> Option<Tensor> {
        let applies = match path {
            ConvPath::Libtorch => true,
            ConvPath::Im2colGemm => self.im2col_applies(x),
            ConvPath::Winograd => self.winograd_applies(x),
        };
        if !applies || residual.is_some_and(|r| !self.residual_fits(x, r)) {
            return None;
        }
        Some(match path {
            ConvPath::Libtorch => {
                let y = self.libtorch(x);
                match residual {
                    Some(r) => r + y,
                    None => y,
                }
            }
            ConvPath::Im2colGemm => self.forward_im2col(x, residual),
            ConvPath::Winograd => self.forward_winograd(x, residual),
        })
    }

    /// libtorch's convolution with the same weights (the reference of the tests).
    pub fn libtorch(&self, x: &Tensor) -> Tensor {
        let (s, p) = (self.stride, self.padding);
        x.conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], 1)
    }

    /// Whether `residual` is the shape of the convolution of the batch-1 input `x`, a
    /// contiguous f32 CPU tensor that autograd need not see.
    fn residual_fits(&self, x: &Tensor, residual: &Tensor) -> bool {
        let c_out = self.weight.size()[0];
        let [_, _, h, w] = x.size()[..] else {
            return false;
        };
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let out_shape = [1, c_out, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1];
        residual.size() == out_shape && is_contiguous_cpu_f32(residual) && !records_grad([residual])
    }

    /// The implementation [`ConvKernel::forward`] picks for `x`: difflab's where it applies (see
    /// [`ConvKernel::forward_on_path`]) and beats libtorch's (`cargo bench -p difflab-lab --bench
    /// kernels -- conv`, 2 threads; the figures are in docs/performance.md): every input
    /// libtorch sends to `slow_conv2d` (kernel at most 3×3, at most [`SLOW_PATH_MAX_INPUT`]
    /// elements: its im2col runs on one thread) and a 1×1 kernel on at most
    /// [`POINTWISE_MAX_INPUT`] elements (no columns to write, and libtorch's oneDNN call costs
    /// more than the product). Larger inputs stay on oneDNN, which is faster there. Before
    /// both, 3×3 stride-1 kernels go through Winograd's `F(2×2, 3×3)` where
    /// [`WinogradF2::pays_off`].
    pub fn path_for(&self, x: &Tensor) -> ConvPath {
        if self.winograd_applies(x) {
            let [_, c, h, w] = x.size()[..] else {
                unreachable!("winograd_applies checked a 4-D input")
            };
            let c_out = self.weight.size()[0];
            if WinogradF2::new([c, h, w], c_out, self.padding).pays_off() {
                return ConvPath::Winograd;
            }
        }
        let n = x.numel() as i64;
        let pays_off = match (self.kernel, self.stride, self.padding) {
            (1, 1, 0) => n <= POINTWISE_MAX_INPUT,
            (k, _, _) => k <= 3 && n <= SLOW_PATH_MAX_INPUT,
        };
        if pays_off && self.im2col_applies(x) {
            ConvPath::Im2colGemm
        } else {
            ConvPath::Libtorch
        }
    }

    /// Whether difflab's path can compute `x` at all: a contiguous batch-1 f32 CPU input, a
    /// contiguous weight and bias, the BLAS reachable, and nothing autograd must record (grad
    /// mode off, or no input requiring a gradient).
    fn im2col_applies(&self, x: &Tensor) -> bool {
        let (w, b) = (&self.weight, self.bias.as_ref());
        x.dim() == 4
            && x.size()[0] == 1
            && !records_grad([x, w].into_iter().chain(b))
            && is_contiguous_cpu_f32(x)
            && is_contiguous_cpu_f32(w)
            && b.is_none_or(is_contiguous_cpu_f32)
            && blas::direct()
    }

    /// Whether difflab's Winograd path can compute `x`: [`ConvKernel::im2col_applies`] and a 3×3
    /// kernel with stride 1.
    fn winograd_applies(&self, x: &Tensor) -> bool {
        self.kernel == 3 && self.stride == 1 && self.im2col_applies(x)
    }

    /// The transformed weight for the current state of the weight, computed when the weight
    /// changed since the last call.
    fn transformed_weight(&self) -> Tensor {
        let weight = &self.weight;
        let (data, version) = (weight.data_ptr() as usize, weight.internal_version());
        let mut cached = self
            .winograd_weight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cached {
            Some(t) if t.data == data && t.version == version => t.u.shallow_clone(),
            _ => {
                let u = winograd::transform_weight(weight);
                *cached = Some(TransformedWeight {
                    data,
                    version,
                    u: u.shallow_clone(),
                });
                u
            }
        }
    }

    /// The output of one image through Winograd's `F(2×2, 3×3)` (see [`crate::winograd`]),
    /// plus `residual` if given (the output's shape, contiguous f32 CPU).
    fn forward_winograd(&self, x: &Tensor, residual: Option<&Tensor>) -> Tensor {
        let [_, c, h, w] = x.size()[..] else {
            unreachable!("winograd_applies checked a 4-D input")
        };
        let c_out = self.weight.size()[0];
        let geometry = WinogradF2::new([c, h, w], c_out, self.padding);
        let [ho, wo] = geometry.output_size().map(|v| v as i64);
        let f32_cpu = (Kind::Float, Device::Cpu);
        let out = Tensor::empty([1, c_out, ho, wo], f32_cpu);
        let v = Tensor::empty([geometry.transformed_input_len() as i64], f32_cpu);
        let m = Tensor::empty([geometry.products_len() as i64], f32_cpu);
        let u = self.transformed_weight();
        let ptr = |t: &Tensor| t.data_ptr() as *const f32;
        // SAFETY: `winograd_applies` checked contiguous f32 CPU input, weight and bias; the
        // transformed weight, `v`, `m` and `out` were just made with the geometry's sizes, and
        // the caller checked the residual's shape and layout.
        unsafe {
            geometry.run(
                ptr(x),
                ptr(&u),
                self.bias.as_ref().map(ptr),
                residual.map(ptr),
                v.data_ptr() as *mut f32,
                m.data_ptr() as *mut f32,
                out.data_ptr() as *mut f32,
            );
        }
        out
    }

    /// The output of one image through the columns and the BLAS (see [`ConvKernel::path_for`]),
    /// plus `residual` if given (the output's shape, contiguous f32 CPU), written into the
    /// output before the product is accumulated onto it.
    fn forward_im2col(&self, x: &Tensor, residual: Option<&Tensor>) -> Tensor {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let [_, c, h, w] = x.size()[..] else {
            unreachable!("path_for checked a 4-D input")
        };
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let c_out = self.weight.size()[0];
        let out = Tensor::empty([1, c_out, ho, wo], (Kind::Float, Device::Cpu));
        let out_rows = out.view([c_out, ho * wo]);
        let accumulate = match (&self.bias, residual) {
            (Some(bias), residual) => {
                blas::broadcast_columns(&out_rows, bias, residual);
                true
            }
            (None, Some(residual)) => {
                out.shallow_clone().copy_(residual);
                true
            }
            (None, None) => false,
        };
        let weight = self.weight.view([c_out, c * k * k]);
        if k == 1 && s == 1 && p == 0 {
            blas::gemm(
                &out_rows,
                &weight,
                false,
                &x.view([c, h * w]),
                false,
                accumulate,
            );
        } else {
            let cols = Tensor::empty([c * k * k, ho * wo], (Kind::Float, Device::Cpu));
            let geometry = Im2col::new([c, h, w], [k, s, p]);
            // SAFETY: both tensors are contiguous f32 of the sizes the geometry describes.
            unsafe {
                geometry.run(x.data_ptr() as *const f32, cols.data_ptr() as *mut f32);
            }
            blas::gemm(&out_rows, &weight, false, &cols, false, accumulate);
        }
        out
    }
}

/// The im2col rearrangement of one `[C, H, W]` image for a `k`×`k` kernel with stride `s` and
/// zero padding `p`: a `[C·k·k, H'·W']` matrix whose row `(c, ky, kx)` holds, for every output
/// position `(oy, ox)`, the input `x[c, oy·s + ky − p, ox·s + kx − p]` (0 outside the image),
/// so that `weight.view([out, C·k·k]) · columns` is the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2col {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Im2col {
    /// The geometry for an input `[c, h, w]` and `[kernel, stride, padding]`.
    ///
    /// # Panics
    /// When the kernel does not fit the padded input, or a size is negative or the stride 0.
    pub fn new([c, h, w]: [i64; 3], [k, s, p]: [i64; 3]) -> Self {
        assert!(
            c >= 0 && k >= 1 && s >= 1 && p >= 0 && h + 2 * p >= k && w + 2 * p >= k,
            "im2col: kernel {k} stride {s} padding {p} on [{c}, {h}, {w}]"
        );
        let u = |v: i64| v as usize;
        Self {
            c: u(c),
            h: u(h),
            w: u(w),
            k: u(k),
            s: u(s),
            p: u(p),
            ho: u((h + 2 * p - k) / s + 1),
            wo: u((w + 2 * p - k) / s + 1),
        }
    }

    /// Elements of the input image.
    pub fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Elements of the column matrix.
    pub fn columns_len(&self) -> usize {
        self.c * self.k * self.k * self.ho * self.wo
    }

    /// Fill the columns from the image, whole channels (their `k·k` rows) split over
    /// libtorch's OpenMP team. Each thread copies one channel at a time into a zero-bordered
    /// `[H + 2p, W + 2p]` plane, from which every output row of every tap is one short copy.
    ///
    /// # Safety
    /// `x` points to [`Im2col::input_len`] readable f32, `cols` to [`Im2col::columns_len`]
    /// writable f32 that nothing else touches during the call, and the two do not overlap.
    pub(crate) unsafe fn run(&self, x: *const f32, cols: *mut f32) {
        let (x, cols) = (SyncPtr(x as *mut f32), SyncPtr(cols));
        let (k, s, p) = (self.k, self.s, self.p);
        let width = self.ho * self.wo;
        let per_channel = k * k * width;
        if per_channel == 0 {
            return;
        }
        omp_team::for_each_chunk(self.columns_len(), per_channel, |range| {
            // SAFETY: the caller vouches for both buffers; the ranges handed out are disjoint
            // and whole channels (multiples of `per_channel`).
            let (input, out) =
                unsafe { (x.slice(0..self.input_len()), cols.slice_mut(range.clone())) };
            let (h, w, wo) = (self.h, self.w, self.wo);
            let wp = w + 2 * p;
            let mut padded = vec![0.0_f32; (h + 2 * p) * wp];
            for (i, block) in out.chunks_exact_mut(per_channel).enumerate() {
                let c = range.start / per_channel + i;
                let plane = &input[c * h * w..(c + 1) * h * w];
                // The interior only: the border stays zero for every channel.
                for (row, dst) in plane
                    .chunks_exact(w)
                    .zip(padded[p * wp + p..].chunks_mut(wp))
                {
                    dst[..w].copy_from_slice(row);
                }
                for (r, row) in block.chunks_exact_mut(width).enumerate() {
                    let (ky, kx) = (r / k, r % k);
                    for (oy, dst) in row.chunks_exact_mut(wo).enumerate() {
                        let start = (oy * s + ky) * wp + kx;
                        if s == 1 {
                            copy_short(dst, &padded[start..start + wo]);
                        } else {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d = padded[start + j * s];
                            }
                        }
                    }
                }
            }
        });
    }
}

/// `dst.copy_from_slice(src)` for the short rows of an image (a few to a few dozen floats):
/// fixed 8-float moves the compiler inlines, instead of a `memcpy` call per row.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d8, s8) in (&mut d).zip(&mut s) {
        d8.copy_from_slice(s8);
    }
    for (d1, s1) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d1 = *s1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn f32_cpu() -> (Kind, Device) {
        (Kind::Float, Device::Cpu)
    }

    /// The kernels of a fresh layer (tch's initialisation) under `vs`.
    fn layer(vs: nn::Path, c_in: i64, c_out: i64, k: i64, s: i64, p: i64) -> ConvKernel {
        let layer = nn::conv2d(vs, c_in, c_out, k, Default::default());
        ConvKernel::new(&layer, s, p)
    }

    /// Every kernel, stride and padding the networks use (and a few they do not), against
    /// libtorch's convolution of the same weights.
    #[test]
    fn matches_libtorch_for_every_geometry() {
        let _guard = tch::no_grad_guard();
        for (c_in, c_out, size, k, s, p) in [
            (3, 8, 9, 3, 1, 1),
            (5, 4, 8, 3, 2, 1),
            (5, 4, 9, 3, 2, 0),
            (4, 6, 7, 1, 1, 0),
            (2, 3, 6, 3, 1, 0),
            (2, 3, 5, 2, 2, 0),
            (2, 3, 5, 1, 2, 1),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let conv = layer(vs.root(), c_in, c_out, k, s, p);
            let x = Tensor::randn([1, c_in, size, size], f32_cpu());
            let ours = conv
                .forward_on_path(&x, ConvPath::Im2colGemm, None)
                .expect("applies");
            let reference = conv.libtorch(&x);
            assert_eq!(ours.size(), reference.size());
            let err = (&ours - &reference).abs().max().double_value(&[]);
            assert!(err < 1e-5, "k {k} s {s} p {p}: max error {err}");
        }
    }

    /// Winograd's path against libtorch's convolution: even and odd sizes (tiles hanging over
    /// the edge), paddings 0–2, non-square images, one input channel, with and without bias
    /// and residual.
    #[test]
    fn winograd_matches_libtorch() {
        let _guard = tch::no_grad_guard();
        for (c_in, c_out, h, w, p) in [
            (3, 8, 8, 8, 1),
            (5, 4, 7, 9, 1),
            (4, 6, 6, 5, 0),
            (2, 3, 5, 5, 2),
            (1, 2, 3, 3, 0),
            (8, 16, 16, 16, 1),
            (32, 32, 32, 32, 1),
            (16, 42, 8, 8, 1),
            (24, 20, 6, 7, 1),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let conv = layer(vs.root(), c_in, c_out, 3, 1, p);
            let x = Tensor::randn([1, c_in, h, w], f32_cpu());
            let reference = conv.libtorch(&x);
            let ours = conv
                .forward_on_path(&x, ConvPath::Winograd, None)
                .expect("applies");
            assert_eq!(ours.size(), reference.size(), "{c_in} {h}x{w} p {p}");
            // Each output sums 9·c_in products of unit-scale terms.
            let scale = reference.abs().max().double_value(&[]).max(1.0);
            let err = (&ours - &reference).abs().max().double_value(&[]);
            assert!(
                err < 2e-6 * scale * (c_in as f64).sqrt() * 3.0,
                "{c_in}->{c_out} {h}x{w} p {p}: max error {err}"
            );
            let residual = Tensor::randn(reference.size(), f32_cpu());
            let with_residual = conv.forward_winograd(&x, Some(&residual));
            assert!(with_residual.allclose(&(&residual + &reference), 1e-4, 1e-4, false));
            // The portable loops (CPUs without AVX-512) compute the same.
            let portable =
                winograd::with_portable_kernels(|| conv.forward_winograd(&x, Some(&residual)));
            assert!(
                portable.allclose(&with_residual, 1e-5, 1e-5, false),
                "{c_in} {h}x{w} p {p}"
            );
        }
    }

    #[test]
    fn the_winograd_weight_follows_weight_updates() {
        let _guard = tch::no_grad_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = layer(vs.root(), 4, 4, 3, 1, 1);
        let x = Tensor::randn([1, 4, 6, 6], f32_cpu());
        let before = conv
            .forward_on_path(&x, ConvPath::Winograd, None)
            .expect("applies");
        // An in-place update (an optimizer step, an EMA copy, a checkpoint load).
        let mut weight = conv.weight.shallow_clone();
        let _ = weight.g_mul_scalar_(2.0);
        let after = conv
            .forward_on_path(&x, ConvPath::Winograd, None)
            .expect("applies");
        assert!(after.allclose(&conv.libtorch(&x), 1e-5, 1e-5, false));
        assert!(!after.allclose(&before, 1e-5, 1e-5, false));
        // Unchanged weights reuse the transform: the same values again.
        let again = conv
            .forward_on_path(&x, ConvPath::Winograd, None)
            .expect("applies");
        assert!(again.equal(&after));
    }

    #[test]
    fn winograd_takes_only_3x3_stride_1_inference() {
        let vs = nn::VarStore::new(Device::Cpu);
        let x = Tensor::randn([1, 4, 8, 8], f32_cpu());
        let conv = layer(vs.root() / "a", 4, 4, 3, 1, 1);
        // Grad mode with weights requiring grad: autograd must see the convolution.
        assert!(conv.forward_on_path(&x, ConvPath::Winograd, None).is_none());
        let _guard = tch::no_grad_guard();
        assert!(conv.forward_on_path(&x, ConvPath::Winograd, None).is_some());
        let strided = layer(vs.root() / "b", 4, 4, 3, 2, 1);
        assert!(
            strided
                .forward_on_path(&x, ConvPath::Winograd, None)
                .is_none()
        );
        let pointwise = layer(vs.root() / "c", 4, 4, 1, 1, 0);
        assert!(
            pointwise
                .forward_on_path(&x, ConvPath::Winograd, None)
                .is_none()
        );
        let batch = Tensor::randn([2, 4, 8, 8], f32_cpu());
        assert!(
            conv.forward_on_path(&batch, ConvPath::Winograd, None)
                .is_none()
        );
    }

    #[test]
    fn the_columns_are_the_unfolded_image() {
        let x = Tensor::arange(2 * 5 * 6, f32_cpu()).view([1, 2, 5, 6]);
        for (k, s, p) in [(3, 1, 1), (3, 2, 1), (2, 1, 0), (3, 2, 2)] {
            let geometry = Im2col::new([2, 5, 6], [k, s, p]);
            let cols = Tensor::full([geometry.columns_len() as i64], f64::NAN, f32_cpu());
            // SAFETY: sizes from the geometry, separate tensors.
            unsafe { geometry.run(x.data_ptr() as *const f32, cols.data_ptr() as *mut f32) };
            let expected = x.im2col([k, k], [1, 1], [p, p], [s, s]).view([-1]);
            assert!(cols.equal(&expected), "k {k} s {s} p {p}");
        }
    }

    #[test]
    fn the_residual_is_added_on_either_path() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = layer(vs.root(), 8, 6, 3, 1, 1);
        let x = Tensor::randn([1, 8, 10, 10], f32_cpu());
        let residual = Tensor::randn([1, 6, 10, 10], f32_cpu());
        let _guard = tch::no_grad_guard();
        assert_eq!(conv.path_for(&x), ConvPath::Im2colGemm);
        let expected = &residual + conv.libtorch(&x);
        let sum = conv.forward(&x, Some(&residual)).expect("applies");
        let err = (sum - &expected).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{err}");
        // A batch is libtorch's (the caller adds the residual).
        let xs = Tensor::cat(&[&x, &x], 0);
        let residuals = Tensor::cat(&[&residual, &residual], 0);
        assert!(conv.forward(&xs, Some(&residuals)).is_none());
    }

    #[test]
    fn without_a_bias_the_product_is_not_accumulated() {
        let _guard = tch::no_grad_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let config = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let conv = ConvKernel::new(&nn::conv2d(vs.root(), 3, 4, 3, config), 1, 1);
        let x = Tensor::randn([1, 3, 6, 6], f32_cpu());
        // Twice: a reused output buffer must not carry the previous product.
        for _ in 0..2 {
            let ours = conv
                .forward_on_path(&x, ConvPath::Im2colGemm, None)
                .expect("applies");
            assert!(ours.allclose(&conv.libtorch(&x), 1e-5, 1e-5, false));
        }
    }

    #[test]
    fn autograd_batches_large_inputs_and_other_layouts_stay_on_libtorch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = layer(vs.root(), 64, 64, 3, 1, 1);
        let small = Tensor::randn([1, 64, 16, 16], f32_cpu());
        // Weights require grad and grad mode is on: training.
        assert_eq!(conv.path_for(&small), ConvPath::Libtorch);
        assert!(
            conv.forward(&small, None).is_none(),
            "autograd must see the training convolution"
        );
        let _guard = tch::no_grad_guard();
        // 3×3 stride 1 at 8–32 px: Winograd where its vector kernels run, else im2col up to
        // libtorch's slow-path size and oneDNN above it.
        let fast = winograd::fast_kernels();
        let pick = |fallback| if fast { ConvPath::Winograd } else { fallback };
        assert_eq!(conv.path_for(&small), pick(ConvPath::Im2colGemm));
        let batch = Tensor::randn([2, 64, 16, 16], f32_cpu());
        assert_eq!(conv.path_for(&batch), ConvPath::Libtorch);
        let large = Tensor::randn([1, 64, 32, 32], f32_cpu());
        assert_eq!(conv.path_for(&large), pick(ConvPath::Libtorch));
        // Past the channel bound, and below 8 px, never Winograd.
        let wide = layer(vs.root() / "wide", 128, 128, 3, 1, 1);
        let wide_input = Tensor::randn([1, 128, 32, 32], f32_cpu());
        assert_eq!(wide.path_for(&wide_input), ConvPath::Libtorch);
        let three = layer(vs.root() / "rgb", 3, 64, 3, 1, 1);
        assert_eq!(
            three.path_for(&Tensor::randn([1, 3, 32, 32], f32_cpu())),
            ConvPath::Im2colGemm
        );
        let tiny = Tensor::randn([1, 64, 8, 8], f32_cpu());
        assert_eq!(conv.path_for(&tiny), pick(ConvPath::Im2colGemm));
        let tinier = Tensor::randn([1, 64, 4, 4], f32_cpu());
        assert_eq!(conv.path_for(&tinier), ConvPath::Im2colGemm);
        let strided = layer(vs.root() / "down", 64, 64, 3, 2, 1);
        assert_eq!(strided.path_for(&small), ConvPath::Im2colGemm);
        let five = layer(vs.root() / "five", 64, 64, 5, 1, 2);
        assert_eq!(five.path_for(&small), ConvPath::Libtorch);
        assert!(
            five.forward_on_path(&small, ConvPath::Im2colGemm, None)
                .is_some()
        );
        let channels_last = small
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        assert_eq!(conv.path_for(&channels_last), ConvPath::Libtorch);
        let doubles = small.to_kind(Kind::Double);
        assert_eq!(conv.path_for(&doubles), ConvPath::Libtorch);
        // A 1×1 kernel needs no columns: taken up to a much larger size.
        let pointwise = layer(vs.root() / "pw", 64, 32, 1, 1, 0);
        assert_eq!(pointwise.path_for(&large), ConvPath::Im2colGemm);
        let huge = Tensor::randn([1, 64, 64, 64], f32_cpu());
        assert_eq!(pointwise.path_for(&huge), ConvPath::Libtorch);
    }
}
