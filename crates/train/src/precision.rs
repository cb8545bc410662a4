//! Mixed precision: bf16 autocast (on CUDA by default), through the C++ shim of `difflab-ffi`
//! (the C API that tch wraps can switch autocast on but not choose its dtype: it would be fp16,
//! which also needs loss scaling; bf16 has fp32's range and does not).

pub use difflab_ffi::Autocast;
