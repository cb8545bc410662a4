//! Where samplers get their Gaussian noise: seeded and reproducible.
//!
//! All noise is drawn on the CPU generator and then moved to the target device, so the same
//! seed gives the same noise on every device (as diffusers recommends with a CPU generator).

use std::sync::{Mutex, MutexGuard};

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

/// One independent stream per image: draw k for image i is `randn` after seeding with
/// `mix(seed_i, k)`. Image i therefore gets the same noise whatever batch it is sampled in,
/// so changing `--batch-size` never changes the images.
pub struct PerImageNoise {
    seeds: Vec<u64>,
    draws: u64,
}

impl PerImageNoise {
    /// Image `i` gets seed `mix(seed, first_index + i)`.
    pub fn new(seed: u64, first_index: u64, batch: usize) -> Self {
        let seeds = (0..batch as u64)
            .map(|i| mix(seed, first_index + i))
            .collect();
        Self { seeds, draws: 0 }
    }

    /// Explicit per-image seeds.
    pub fn from_seeds(seeds: Vec<u64>) -> Self {
        Self { seeds, draws: 0 }
    }
}

impl NoiseSource for PerImageNoise {
    fn draw(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        assert_eq!(
            shape.first().copied(),
            Some(self.seeds.len() as i64),
            "PerImageNoise built for {} images, asked for shape {shape:?}",
            self.seeds.len()
        );
        let k = self.draws;
        self.draws += 1;
        let _lock = generator_lock();
        let per_image: Vec<Tensor> = self
            .seeds
            .iter()
            .map(|&s| {
                tch::manual_seed((mix(s, k) >> 1) as i64);
                Tensor::randn(&shape[1..], (kind, Device::Cpu))
            })
            .collect();
        Tensor::stack(&per_image, 0).to_device(device)
    }
}

/// SplitMix64 finaliser of `a` combined with `b`: a cheap, well-mixed seed derivation.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
