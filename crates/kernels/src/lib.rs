//! difflab's hand-written CPU kernels: everything in the workspace that reaches past libtorch's
//! operations into raw memory, and so every `unsafe` block of the workspace.
//!
//! Each kernel is an alternative to a libtorch composition that the rest of difflab could run
//! instead, and each says where it applies: a function here returns `None` (or `false`) for
//! inputs it does not take, and the caller falls back to libtorch. The models call them through
//! one seam (`difflab_models::ops`), the trainer through one step engine
//! (`difflab_train`'s fused CPU engine); with the `kernels` feature of those crates off
//! nothing here is compiled in, and difflab is pure libtorch.
//!
//! | module | what |
//! |---|---|
//! | [`omp_team`] | running a closure on libtorch's own OpenMP threads |
//! | [`blas`] | `sgemm_` straight through the BLAS libtorch carries |
//! | [`cpu`] | layout checks, SiLU and its derivative, sums of squares |
//! | [`winograd`] | Winograd `F(2×2, 3×3)` convolutions (AVX-512) for batch-1 inference |
//! | [`group_norm_silu`] | GroupNorm + SiLU (+ a resnet's per-channel terms) in one kernel |
//! | [`upsample`] | nearest ×2 upsampling |
//! | [`mlp_tape`] | the MLP denoiser's training pass, forward and backward, without autograd |
//!
//! Every `unsafe` block carries its own `SAFETY` comment (`clippy::undocumented_unsafe_blocks`
//! is denied), and nothing exported here can be used unsoundly from safe code.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod allocator;
pub mod attention;
pub mod blas;
pub mod conv;
pub mod cpu;
pub mod group_norm_silu;
pub mod loss;
pub mod memo;
pub mod mlp_layer;
pub mod mlp_tape;
pub mod omp_team;
pub mod optim;
pub mod q_sample;
pub mod upsample;
pub mod winograd;

/// Whether difflab's kernels may run: not when the environment sets `DIFFLAB_KERNELS` to
/// `off`, `0` or `false` (every call site then takes its libtorch path). Read once.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var("DIFFLAB_KERNELS").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}
