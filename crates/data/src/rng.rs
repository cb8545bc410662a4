//! Counter-based randomness: every random choice of the data pipeline comes from a `ChaCha8Rng`
//! keyed by (stream, seed, a, b), so it is a pure function of those numbers and resume needs no
//! saved generator state. Ranges and floats are derived here from raw `u64`s (not through
//! `rand`'s distributions), so the data cannot change with a `rand` upgrade.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Independent streams, one per use.
#[derive(Clone, Copy)]
#[repr(u64)]
pub(crate) enum Stream {
    /// Epoch permutations: (seed, epoch).
    Permutation = 1,
    /// Horizontal flips: (seed, epoch, index).
    Flip = 2,
    /// Procedural shapes: (seed, index).
    Shapes = 3,
    /// 2-D toy points: (seed).
    Toy2d = 4,
}

/// The generator for `(stream, seed, a, b)`: the four numbers are the 256-bit ChaCha key.
pub(crate) fn keyed_rng(stream: Stream, seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([stream as u64, seed, a, b]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform integer in `0..n` (`n > 0`), unbiased (Lemire's multiply-and-reject).
pub(crate) fn below(rng: &mut impl Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Uniform f64 in [0, 1) with 53 random bits.
pub(crate) fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform f64 in `[lo, hi)`.
pub(crate) fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// A pair of independent standard normal draws (Box–Muller).
pub(crate) fn normal_pair(rng: &mut impl Rng) -> (f64, f64) {
    let u1 = 1.0 - unit_f64(rng); // (0, 1]: ln is finite
    let u2 = unit_f64(rng);
    let r = (-2.0 * u1.ln()).sqrt();
    let a = std::f64::consts::TAU * u2;
    (r * a.cos(), r * a.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_differ_and_repeat() {
        let x = keyed_rng(Stream::Flip, 1, 2, 3).next_u64();
        assert_eq!(x, keyed_rng(Stream::Flip, 1, 2, 3).next_u64());
        assert_ne!(x, keyed_rng(Stream::Flip, 1, 2, 4).next_u64());
        assert_ne!(x, keyed_rng(Stream::Permutation, 1, 2, 3).next_u64());
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = keyed_rng(Stream::Shapes, 0, 0, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[below(&mut rng, 7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = keyed_rng(Stream::Toy2d, 0, 0, 0);
        let xs: Vec<f64> = (0..5000)
            .flat_map(|_| {
                let (a, b) = normal_pair(&mut rng);
                [a, b]
            })
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
