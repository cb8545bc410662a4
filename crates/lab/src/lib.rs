//! Running experiments: sweeps (a grid of config overrides, each point trained and evaluated
//! in its own processes, results tables and plots, Slurm arrays) and benchmarks (the trainer's
//! own step and the sampler, FLOPs, memory).
#![forbid(unsafe_code)]

pub mod bench;
pub mod sweep;
