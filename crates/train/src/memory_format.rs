//! The memory layout of the convolutional networks' weights and activations in training:
//! channels-last (NHWC in memory, still indexed `[N, C, H, W]`) lets oneDNN on the CPU and cuDNN
//! on the GPU run convolutions and their gradients without reordering every tensor in and out
//! of their native layout, and GroupNorm, SiLU and the residual additions all keep the layout.
//!
//! Only the layout changes, never the values a tensor holds: noise is drawn in the standard
//! layout before the network's input is converted, so a run draws the same noise, timesteps and
//! data order whichever layout it trains in, and checkpoints are written in the standard layout
//! (the safetensors writer makes every tensor contiguous), so they load into either.

use tch::{Tensor, nn::VarStore};

/// `t` in channels-last layout when it is 4-D (same values and shape, NHWC memory order), else
/// `t` itself.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.shallow_clone()
    }
}

/// Re-lay every 4-D variable of `vs` (the convolution kernels) out channels-last, in place:
/// every handle to a variable (the model's layers, an optimizer built afterwards) sees the new
/// layout. Build optimizers after this, so their moments take the same layout.
pub fn store_to_channels_last(vs: &VarStore) {
    let _guard = tch::no_grad_guard();
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 {
            let relaid = to_channels_last(&var);
            var.set_data(&relaid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, nn};

    #[test]
    fn relaying_keeps_values_and_shapes_and_changes_strides() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = vs.root().var(
            "conv",
            &[8, 3, 3, 3],
            nn::Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        );
        let bias = vs.root().var("bias", &[8], nn::Init::Const(0.5));
        let before = conv.copy();
        store_to_channels_last(&vs);
        assert_eq!(conv.size(), vec![8, 3, 3, 3]);
        assert_eq!(conv.stride(), vec![27, 1, 9, 3], "NHWC memory order");
        assert!(conv.equal(&before), "same values");
        assert!(conv.requires_grad() && bias.is_contiguous());
        // Gradients reach the re-laid variable.
        let x = to_channels_last(&Tensor::randn([2, 3, 5, 5], (Kind::Float, Device::Cpu)));
        x.conv2d(&conv, Some(&bias), [1, 1], [1, 1], [1, 1], 1)
            .sum(Kind::Float)
            .backward();
        assert_eq!(conv.grad().size(), vec![8, 3, 3, 3]);
    }
}
