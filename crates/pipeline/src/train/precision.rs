//! Mixed precision: bf16 autocast (on CUDA by default), through the C++ shim of `difflab-ffi`
//! (the C API that tch wraps can switch autocast on but not choose its dtype: it would be fp16,
//! which also needs loss scaling; bf16 has fp32's range and does not).

use serde::{Deserialize, Serialize};
use tch::Device;

/// Numeric precision of the forward pass in training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA, full fp32 on the CPU.
    #[default]
    Auto,
    /// Full fp32 everywhere.
    Fp32,
    /// bf16 autocast on any device (on a CPU without bf16 units this is slower than fp32).
    Bf16,
}

impl Precision {
    /// Whether the forward pass on `device` runs under bf16 autocast.
    pub fn uses_bf16(self, device: Device) -> bool {
        match self {
            Self::Auto => device.is_cuda(),
            Self::Fp32 => false,
            Self::Bf16 => true,
        }
    }
}

pub use difflab_ffi::Autocast;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_bf16_on_cuda_only() {
        assert!(Precision::Auto.uses_bf16(Device::Cuda(0)));
        assert!(!Precision::Auto.uses_bf16(Device::Cpu));
        assert!(Precision::Bf16.uses_bf16(Device::Cpu));
        assert!(!Precision::Fp32.uses_bf16(Device::Cuda(0)));
    }
}
