//! The small C++ shims difflab needs where the C API that tch wraps stops short: libtorch's
//! autocast dtype (tch can switch autocast on, but only for fp16, which also needs loss
//! scaling; bf16 has fp32's range and does not). The shim is compiled by `build.rs`
//! (`csrc/autocast.cpp`); this crate is its only caller, and exports a safe guard.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::raw::c_int;

use tch::Device;

unsafe extern "C" {
    fn difflab_autocast_is_enabled(device: c_int) -> c_int;
    fn difflab_autocast_set_enabled(device: c_int, enabled: c_int);
    fn difflab_autocast_get_dtype(device: c_int) -> c_int;
    fn difflab_autocast_set_dtype(device: c_int, dtype: c_int);
    fn difflab_autocast_increment_nesting() -> c_int;
    fn difflab_autocast_decrement_nesting() -> c_int;
    fn difflab_autocast_clear_cache();
}

/// bf16 autocast for `device`'s type while alive (matmuls and convolutions run in bf16, losses
/// and reductions in fp32, weights stay fp32); the previous state is restored on drop. Run the
/// forward pass and loss inside it and `backward()` outside, as PyTorch recommends.
pub struct Autocast {
    device: c_int,
    was_enabled: c_int,
    old_dtype: c_int,
}

impl Autocast {
    /// Switch bf16 autocast on for `device`'s type.
    pub fn bf16(device: Device) -> Self {
        let device = c_int::from(device.is_cuda());
        // SAFETY: plain calls into libtorch's thread-local autocast state.
        unsafe {
            let guard = Self {
                device,
                was_enabled: difflab_autocast_is_enabled(device),
                old_dtype: difflab_autocast_get_dtype(device),
            };
            difflab_autocast_set_enabled(device, 1);
            difflab_autocast_set_dtype(device, 1);
            difflab_autocast_increment_nesting();
            guard
        }
    }

    /// Whether autocast is on for `device`'s type on this thread, and with bf16.
    pub fn state(device: Device) -> (bool, bool) {
        let device = c_int::from(device.is_cuda());
        // SAFETY: reads libtorch's thread-local autocast state.
        unsafe {
            (
                difflab_autocast_is_enabled(device) != 0,
                difflab_autocast_get_dtype(device) == 1,
            )
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the state read in `bf16`.
        unsafe {
            if difflab_autocast_decrement_nesting() == 0 {
                difflab_autocast_clear_cache();
            }
            difflab_autocast_set_enabled(self.device, self.was_enabled);
            if self.old_dtype >= 0 {
                difflab_autocast_set_dtype(self.device, self.old_dtype);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn matmuls_run_in_bf16_inside_and_fp32_after() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!Autocast::state(Device::Cpu).0);
        {
            let _ac = Autocast::bf16(Device::Cpu);
            assert_eq!(Autocast::state(Device::Cpu), (true, true));
            let y = a.matmul(&b);
            assert_eq!(
                y.kind(),
                Kind::BFloat16,
                "autocast should run matmul in bf16"
            );
            // Losses stay in fp32 under autocast.
            let loss = y.mse_loss(
                &Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)),
                tch::Reduction::Mean,
            );
            assert_eq!(loss.kind(), Kind::Float);
            {
                let _inner = Autocast::bf16(Device::Cpu);
                assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
            }
            assert!(
                Autocast::state(Device::Cpu).0,
                "nested guard restores the outer state"
            );
        }
        assert!(!Autocast::state(Device::Cpu).0);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}

unsafe extern "C" {
    fn _exit(status: c_int) -> !;
}

/// End the process at once with `code` (POSIX `_exit`): no destructors, no `atexit` handlers,
/// no flushing of libtorch's or the allocator's static state while other threads still use it
/// (what `std::process::exit` from a signal-handler thread would do, and why a second Ctrl-C
/// could crash). Files are left as they are: checkpoints are written atomically, so an
/// unfinished one is only a temporary folder that the next start removes.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes a plain int, never returns and touches no Rust state; ending the
    // process without running destructors is the point.
    unsafe { _exit(code) }
}
