//! Where samplers get their Gaussian noise: seeded and reproducible.
//!
//! All noise is drawn on the CPU generator and then moved to the target device, so the same
//! seed gives the same noise on every device (as diffusers recommends with a CPU generator).

use std::sync::{Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// libtorch has one global CPU generator; seeding it and drawing must not interleave with
/// another thread doing the same, or both streams are corrupted.
static GENERATOR: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Exclusive use of libtorch's global generator for a seed-then-draw sequence, released on drop.
///
/// # Panics
/// If this thread already holds it (e.g. two [`GlobalSeedNoise`] alive at once): that would
/// otherwise deadlock.
pub fn generator_lock() -> GeneratorLock {
    assert!(
        !HELD_HERE.with(|h| h.get()),
        "libtorch's global generator is already held by this thread (is a GlobalSeedNoise alive?)"
    );
    let guard = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    HELD_HERE.with(|h| h.set(true));
    GeneratorLock { _guard: guard }
}

/// Proof of exclusive use of the global generator; see [`generator_lock`].
pub struct GeneratorLock {
    _guard: MutexGuard<'static, ()>,
}

impl Drop for GeneratorLock {
    fn drop(&mut self) {
        HELD_HERE.with(|h| h.set(false));
    }
}

/// A source of standard Gaussian noise for the initial x_T and for stochastic steps.
pub trait NoiseSource {
    /// A fresh `randn` tensor of `shape` (dim 0 is the batch).
    fn draw(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor;
}

/// Seeds libtorch's global generator once, then draws in sequence: the same stream as
/// `torch.manual_seed(seed); torch.randn(shape)` in PyTorch (and so diffusers pipelines with a
/// CPU generator). Images depend on the batch size.
///
/// It holds [`generator_lock`] while alive, so another thread cannot re-seed the generator in
/// the middle of a run; do not create a second one (or a [`PerImageNoise`] draw) on the same
/// thread while one is alive.
pub struct GlobalSeedNoise {
    _exclusive: GeneratorLock,
}

impl GlobalSeedNoise {
    /// Take the global generator and seed it with `seed`.
    pub fn new(seed: u64) -> Self {
        let guard = generator_lock();
        tch::manual_seed(seed as i64);
        Self { _exclusive: guard }
    }
}

impl NoiseSource for GlobalSeedNoise {
    fn draw(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        Tensor::randn(shape, (kind, Device::Cpu)).to_device(device)
    }
}

/// One independent stream per image, so image `i` gets the same noise whatever batch it is
/// sampled in: changing `--batch-size` never changes the images.
///
/// Image `i`'s stream is a `ChaCha8` generator seeded with `splitmix(seed, i)` (see
/// [`splitmix`]); each draw takes the next `C·H·W` standard normals from it, made by the Box–Muller
/// transform of pairs of 53-bit uniforms (computed in f64, rounded to f32). The whole batch is
/// drawn on the host, without touching libtorch's global generator, and moved to the device in
/// one copy.
pub struct PerImageNoise {
    streams: Vec<ChaCha8Rng>,
}

impl PerImageNoise {
    /// Image `i` of the batch is image `first_index + i` of the run: stream `splitmix(seed, first_index + i)`.
    pub fn new(seed: u64, first_index: u64, batch: usize) -> Self {
        Self::from_seeds(
            (0..batch as u64)
                .map(|i| splitmix(seed, first_index + i))
                .collect(),
        )
    }

    /// Explicit per-image stream seeds.
    pub fn from_seeds(seeds: Vec<u64>) -> Self {
        Self {
            streams: seeds.into_iter().map(ChaCha8Rng::seed_from_u64).collect(),
        }
    }

    /// Number of images (streams).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when built for no images.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// `n` standard normals from `rng` (Box–Muller on pairs of uniforms in (0, 1]).
pub(crate) fn fill_standard_normal(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    let mut chunks = out.chunks_exact_mut(2);
    let mut pair = || {
        // (k + 1) / 2^53 lies in (0, 1], so the logarithm is finite.
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
    };
    for c in &mut chunks {
        let (a, b) = pair();
        c[0] = a;
        c[1] = b;
    }
    if let [last] = chunks.into_remainder() {
        *last = pair().0;
    }
}

impl NoiseSource for PerImageNoise {
    fn draw(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        assert_eq!(
            shape.first().copied(),
            Some(self.streams.len() as i64),
            "PerImageNoise built for {} images, asked for shape {shape:?}",
            self.streams.len()
        );
        let per_image: usize = shape[1..].iter().product::<i64>() as usize;
        let mut values = vec![0f32; per_image * self.streams.len()];
        for (rng, chunk) in self
            .streams
            .iter_mut()
            .zip(values.chunks_exact_mut(per_image.max(1)))
        {
            fill_standard_normal(rng, chunk);
        }
        Tensor::from_slice(&values)
            .reshape(shape)
            .to_kind(kind)
            .to_device(device)
    }
}

/// A seed derived from a seed `a` and a counter `b`, all 64 bits: `a ^ ((b + γ)·c₁)` through
/// SplitMix64's finaliser (`z ^= z >> 30; z *= c₁; z ^= z >> 27; z *= c₂; z ^= z >> 31`, with
/// SplitMix64's constants γ = `0x9E3779B97F4A7C15`, c₁ = `0xBF58476D1CE4E5B9`, c₂ =
/// `0x94D049BB133111EB`). Cheap and well mixed: nearby counters give unrelated seeds. The
/// per-image noise streams are seeded with `splitmix(seed, image index)` ([`PerImageNoise`]).
pub fn splitmix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// [`splitmix`] shifted right by one bit: a 63-bit seed, so `as i64` is never negative (what
/// `tch::manual_seed` takes). The training step's seeds: step `s`, micro-batch `m` re-seeds
/// libtorch's generator with `splitmix_63(seed, s·grad_accum + m)` (`difflab_train::mix`),
/// and the trainer's previews and the bench derive their seeds with it too. Kept apart from
/// [`splitmix`] because the two give different values and both are baked into results: a
/// training run's draws come from this one, per-image sampling noise from [`splitmix`].
pub fn splitmix_63(a: u64, b: u64) -> u64 {
    splitmix(a, b) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_and_splitmix_63_keep_their_values() {
        // Computed independently (Python, integers masked to 64 bits) from the formula the
        // noise streams and the trainer's per-step seeds were written with before they shared
        // this implementation: `splitmix_63` is the trainer's `mix`.
        let cases = [
            (0, 0, 0x5c47_22af_355e_9512, 0x2e23_9157_9aaf_4a89),
            (42, 7, 0x028b_68a1_14d8_7371, 0x0145_b450_8a6c_39b8),
            (7, 0x5EED, 0xc01d_6b5d_208d_1808, 0x600e_b5ae_9046_8c04),
            (7, u64::MAX, 0x4bed_7bf0_3ee5_247e, 0x25f6_bdf8_1f72_923f),
            (
                u64::MAX,
                u64::MAX,
                0x4a93_86f4_9346_2018,
                0x2549_c37a_49a3_100c,
            ),
        ];
        for (a, b, full, seed63) in cases {
            assert_eq!(splitmix(a, b), full, "splitmix({a}, {b})");
            assert_eq!(splitmix_63(a, b), seed63, "splitmix_63({a}, {b})");
        }
    }

    #[test]
    fn splitmix_63_is_splitmix_without_its_low_bit_and_never_negative() {
        let mut x = 0x0123_4567_89ab_cdef_u64;
        for i in 0..10_000_u64 {
            x = splitmix(x, i);
            let (seed, n) = (x, x.rotate_left(17) ^ i);
            assert_eq!(splitmix_63(seed, n), splitmix(seed, n) >> 1);
            assert!(splitmix_63(seed, n) as i64 >= 0);
        }
    }
}
