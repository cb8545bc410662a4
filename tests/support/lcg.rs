//! A tiny seeded generator for property tests (no `rand` dependency; deterministic across
//! platforms). Included by crate tests with `#[path = "…/tests/support/lcg.rs"] mod lcg;`.
#![allow(dead_code)]

use tch::{Kind, Tensor};

/// A 64-bit LCG (Knuth's MMIX constants); the high bits are used.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        let mut l = Self(seed ^ 0x2545_F491_4F6C_DD1D);
        l.next_u64();
        l
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        self.range(lo.ln(), hi.ln()).exp()
    }
    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() >> 33) as usize % (hi - lo + 1)
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.int(0, items.len() - 1)]
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// Uniform in [lo, hi) as an f32 tensor of `shape`.
    pub fn uniform_tensor(&mut self, shape: &[i64], lo: f64, hi: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.range(lo, hi)).collect();
        Tensor::from_slice(&v).to_kind(Kind::Float).reshape(shape)
    }
    pub fn normal_tensor(&mut self, shape: &[i64], kind: Kind) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.normal()).collect();
        Tensor::from_slice(&v).to_kind(kind).reshape(shape)
    }
}
