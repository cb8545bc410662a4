//! One hidden layer of the MLP denoiser at inference, `SiLU(x Wᵀ + b + time)` with a time row
//! the whole batch shares (as samplers pass `t`): the product alone through the BLAS, then the
//! bias and the time row added row by row inside the SiLU pass (no broadcast copy of them).

use tch::{Device, Kind, Tensor, nn};

use crate::blas;
use crate::cpu::{grad_enabled, silu_with_row_bias_owned};

/// `SiLU(x Wᵀ + b + time)` for a batch `x` `[B, in]` (B > 1) and one shared `time` row
/// `[1, out]`, all f32 on the CPU, when autograd records nothing and the layer has a bias;
/// `None` otherwise.
pub fn silu_layer(layer: &nn::Linear, x: &Tensor, time: &Tensor) -> Option<Tensor> {
    let bias = layer.bs.as_ref()?;
    let on_cpu = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
    let records = grad_enabled()
        && [x, time, &layer.ws, bias]
            .into_iter()
            .any(Tensor::requires_grad);
    let applies = x.dim() == 2
        && time.size().first() == Some(&1)
        && x.size()[0] > 1
        && on_cpu(x)
        && on_cpu(time)
        && !records
        && blas::direct();
    if !applies {
        return None;
    }
    let pre = Tensor::empty(
        [x.size()[0], layer.ws.size()[0]],
        (Kind::Float, Device::Cpu),
    );
    blas::gemm(&pre, &x.contiguous(), false, &layer.ws, true, false);
    Some(silu_with_row_bias_owned(pre, &(time + bias)))
}
