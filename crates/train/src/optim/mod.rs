//! Optimisation state that must survive a checkpoint bit for bit: Adam/AdamW with moments
//! held as ordinary tensors (tch's `nn::Optimizer` hides them inside libtorch), the learning
//! rate schedule, gradient clipping and the EMA of the weights.
//!
//! Every piece is a pure function of its saved tensors and the step number, so training N
//! steps, checkpointing, reloading and training N more gives the same tensors as 2N steps.
//!
//! | file       | holds                                                                  |
//! |------------|------------------------------------------------------------------------|
//! | `adamw.rs` | [`AdamW`]: Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019) |
//! | `clip.rs`  | [`clip_grad_norm`]: global L2 norm clipping                             |
//! | `ema.rs`   | [`Ema`]: exponential moving average of the weights, with warmup         |
//! | `fused.rs` | (`kernels` feature) the same updates through difflab's one-pass kernels  |

mod adamw;
mod clip;
mod ema;
#[cfg(feature = "kernels")]
mod fused;

pub use adamw::{AdamW, load_optimizer};
pub use clip::clip_grad_norm;
pub use difflab_pipeline::config::{
    EmaConfig, LrConfig, LrSchedule, OptimizerConfig, OptimizerKind,
};
pub use ema::Ema;
#[cfg(feature = "kernels")]
pub use fused::{clip_grad_norm_deferred, clip_grad_norm_deferred_with};
