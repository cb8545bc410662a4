//! Nearest-neighbour ×2 upsampling, the UNet decoder's resampling (DDPM's `Upsample`,
//! diffusers' `Upsample2D` and the up-resampling resnet blocks).
//!
//! libtorch's `upsample_nearest2d` copies its (already contiguous) input once more before the
//! kernel on this path (a visible share of a batch-1 sampling step; see docs/performance.md).
//! For a contiguous f32 CPU tensor that needs no autograd record
//! [`upsample_nearest2x`] writes each output row pair straight from the input row instead,
//! planes split over libtorch's OpenMP team ([`crate::omp_team`]).

use tch::{Device, Kind, Tensor};

use crate::cpu::is_contiguous_cpu_f32;
use crate::omp_team::{self, SyncPtr};

/// `[…, H, W]` → `[…, 2H, 2W]`, every input element repeated in a 2×2 block
/// (`x.upsample_nearest2d([2H, 2W], 2, 2)`, with the same values).
pub fn upsample_nearest2x(x: &Tensor) -> Tensor {
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    // No parameters: without an input that requires a gradient there is nothing to record.
    if size.len() != 4 || !is_contiguous_cpu_f32(x) || x.requires_grad() {
        return x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0);
    }
    let mut out_size = size.clone();
    out_size[2] = 2 * h;
    out_size[3] = 2 * w;
    let out = Tensor::empty(out_size.as_slice(), (Kind::Float, Device::Cpu));
    let (h, w) = (h as usize, w as usize);
    let len = x.numel();
    if len == 0 {
        return out;
    }
    let (src, dst) = (
        SyncPtr(x.data_ptr() as *mut f32),
        SyncPtr(out.data_ptr() as *mut f32),
    );
    omp_team::for_each_chunk(len, h * w, |range| {
        // SAFETY: `x` holds `len` contiguous f32 and `out` (fresh) `4·len`; the ranges are whole
        // input planes, disjoint, and each thread writes only the output planes of its own.
        let (input, output) = unsafe {
            (
                src.slice(range.clone()),
                dst.slice_mut(4 * range.start..4 * range.end),
            )
        };
        for (row, pair) in input.chunks_exact(w).zip(output.chunks_exact_mut(4 * w)) {
            let (first, second) = pair.split_at_mut(2 * w);
            for (v, o) in row.iter().zip(first.chunks_exact_mut(2)) {
                o[0] = *v;
                o[1] = *v;
            }
            second.copy_from_slice(first);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_libtorchs_nearest_upsampling() {
        let f = (Kind::Float, Device::Cpu);
        for shape in [[1, 3, 4, 5], [2, 4, 8, 8], [1, 64, 16, 16], [1, 1, 1, 1]] {
            let x = Tensor::randn(shape, f);
            let (h, w) = (shape[2], shape[3]);
            let expected = x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0);
            assert!(upsample_nearest2x(&x).equal(&expected), "{shape:?}");
        }
    }

    #[test]
    fn autograd_and_other_layouts_take_libtorchs_operation() {
        let f = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([1, 2, 3, 3], f).set_requires_grad(true);
        let y = upsample_nearest2x(&x);
        assert!(y.requires_grad(), "the gradient must reach x");
        let channels_last = Tensor::randn([1, 3, 4, 4], f)
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        let expected = channels_last.upsample_nearest2d([8, 8], 2.0, 2.0);
        assert!(upsample_nearest2x(&channels_last).equal(&expected));
    }
}
