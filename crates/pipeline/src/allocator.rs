//! Process-wide tuning of the C allocator libtorch's CPU tensors come from (with the `kernels`
//! feature: `difflab_kernels::allocator`; without, the allocator is left as it is).

/// Keep activation-sized blocks on the heap and never trim it, so each step reuses the pages
/// of the previous one (see `difflab_kernels::allocator`). Returns whether it took effect.
pub fn tune_for_tensors() -> bool {
    #[cfg(feature = "kernels")]
    {
        difflab_kernels::allocator::tune_for_tensors()
    }
    #[cfg(not(feature = "kernels"))]
    {
        false
    }
}
