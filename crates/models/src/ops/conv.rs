//! The networks' 2-D convolution layer.

use tch::{Tensor, nn, nn::Module};

use crate::init;
use crate::params::ParamCount;

/// A 2-D convolution with a square kernel, equal stride and zero padding on both axes; its
/// parameters are `weight` `[out, in, k, k]` and `bias` `[out]` under the path it was made on
/// (the names of `tch` and diffusers), drawn as `nn.Conv2d` draws them.
///
/// `forward` is libtorch's `conv2d`, except where difflab's kernels are compiled in and enabled
/// and one of their batch-1 inference paths applies (im2col through the BLAS, or Winograd's
/// `F(2×2, 3×3)`: `difflab_kernels::conv`).
#[derive(Debug)]
pub struct Conv2d {
    layer: nn::Conv2D,
    #[cfg(feature = "kernels")]
    kernel: difflab_kernels::conv::ConvKernel,
}

impl Conv2d {
    /// `c_in` → `c_out` channels, a `kernel`×`kernel` kernel, parameters under `vs` drawn as
    /// `nn.Conv2d`'s ([`init::conv2d`]).
    pub fn new(
        vs: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Self {
        let layer = init::conv2d(vs, c_in, c_out, kernel, stride, padding);
        Self {
            #[cfg(feature = "kernels")]
            kernel: difflab_kernels::conv::ConvKernel::new(&layer, stride, padding),
            layer,
        }
    }

    /// The `[out, in, k, k]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.layer.ws
    }

    /// Set the weight and bias to zero ([`crate::InitScheme::ZeroOut`]).
    pub fn zero(&self) {
        init::zero(&self.layer.ws, self.layer.bs.as_ref());
    }

    /// `conv(x)`: `[B, in, H, W]` → `[B, out, H', W']`, `H' = (H + 2p − k)/s + 1`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        #[cfg(feature = "kernels")]
        if difflab_kernels::enabled()
            && let Some(y) = self.kernel.forward(x, None)
        {
            return y;
        }
        self.layer.forward(x)
    }

    /// `residual + conv(x)` (the end of a residual block). difflab's kernels write the residual
    /// and the bias into the output and accumulate the product onto them, saving the addition.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Tensor {
        #[cfg(feature = "kernels")]
        if difflab_kernels::enabled()
            && let Some(y) = self.kernel.forward(x, Some(residual))
        {
            return y;
        }
        // `residual` first: the sum takes its layout.
        residual + self.layer.forward(x)
    }

    /// difflab's kernels for this layer (benchmarks and tests compare their paths).
    #[cfg(feature = "kernels")]
    pub fn kernel(&self) -> &difflab_kernels::conv::ConvKernel {
        &self.kernel
    }
}

impl ParamCount for Conv2d {
    fn param_count(&self) -> i64 {
        self.layer.param_count()
    }
}
