//! Process-wide tuning of the C allocator that libtorch's CPU tensors come from.
//!
//! glibc's `malloc` serves every block above its mmap threshold (128 KiB at start, raised
//! dynamically only up to the size of blocks freed so far) with a fresh `mmap`, and hands
//! freed memory at the top of the heap back to the kernel once more than the trim threshold
//! (128 KiB) is free. A training or sampling step allocates and frees the same activation
//! sizes over and over, so without tuning every step pays for page faults and zeroed pages
//! again (for the 2-D toy a visible share of its CPU time; see docs/performance.md).
//! Keeping up to [`MMAP_THRESHOLD`]-sized blocks on the heap and never trimming it lets every
//! step reuse the pages of the previous one (the same effect PyTorch users get from jemalloc
//! or tcmalloc).

/// Blocks up to this size come from the heap, not their own `mmap` (glibc's ceiling for the
/// threshold on 64-bit systems: 32 MiB).
pub const MMAP_THRESHOLD: i32 = 32 << 20;

/// Apply the tuning (glibc on Linux; elsewhere a no-op). Returns whether it took effect. Call it
/// once, early in `main`, before large tensors exist; calling again changes nothing. An
/// explicit `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment wins: then
/// nothing is changed.
pub fn tune_for_tensors() -> bool {
    if ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|var| std::env::var_os(var).is_some())
    {
        return false;
    }
    imp::tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::os::raw::c_int;

    // glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;

    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn tune() -> bool {
        // SAFETY: `mallopt` only sets allocator parameters; it is thread-safe in glibc.
        unsafe {
            let mmap = mallopt(M_MMAP_THRESHOLD, super::MMAP_THRESHOLD);
            // Never give the top of the heap back (a negative value would disable it too, but
            // glibc documents the largest int as "never trim").
            let trim = mallopt(M_TRIM_THRESHOLD, c_int::MAX);
            mmap == 1 && trim == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn tune() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_is_accepted_by_glibc() {
        // The environment of `cargo test` sets neither variable; glibc accepts both values.
        let took = tune_for_tensors();
        assert_eq!(
            took,
            cfg!(all(target_os = "linux", target_env = "gnu")),
            "mallopt refused the thresholds"
        );
        // Allocation still works afterwards, large blocks included.
        let t = tch::Tensor::ones([3 << 20], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(t.sum(tch::Kind::Double).double_value(&[]), (3 << 20) as f64);
    }
}
