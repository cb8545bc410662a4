//! How a sampling job draws its noise, and the promise each mode makes.

use difflab_samplers::{GlobalSeedNoise, NoiseSource, PerImageNoise};
use serde::{Deserialize, Serialize};

/// Where the noise of a sampling job comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseMode {
    /// One stream per image (`ChaCha8` seeded with `splitmix(seed, image index)`, see
    /// [`PerImageNoise`]): image `i` is the same whatever the batch size, the number of images
    /// or the device. Each image's stream gives, in order: the noise of its conditioning
    /// input (an SR stage's augmentation), its starting x_T, then one draw per stochastic step.
    #[default]
    PerImage,
    /// libtorch's global CPU generator seeded once (`torch.manual_seed(seed)`) and drawn in
    /// sequence, batch after batch: with one batch this reproduces a diffusers pipeline given
    /// a CPU generator, but images change with the batch size.
    TorchGlobal,
}

impl std::str::FromStr for NoiseMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-image" => Ok(Self::PerImage),
            "torch-global" => Ok(Self::TorchGlobal),
            other => Err(format!(
                "unknown noise mode {other:?}: expected per-image or torch-global"
            )),
        }
    }
}

/// The noise of one job: one global stream for the whole job, or a per-image source per batch.
pub(crate) enum JobNoise {
    /// Per-image streams; a fresh source per batch.
    PerImage {
        /// The job's seed.
        seed: u64,
    },
    /// One global stream (holds libtorch's generator lock for the whole job).
    Global(GlobalSeedNoise),
}

impl JobNoise {
    /// Start a job's noise with `seed`.
    pub(crate) fn new(mode: NoiseMode, seed: u64) -> Self {
        match mode {
            NoiseMode::PerImage => Self::PerImage { seed },
            NoiseMode::TorchGlobal => Self::Global(GlobalSeedNoise::new(seed)),
        }
    }

    /// The source for images `first .. first + len`; `run` is called with it.
    pub(crate) fn with_batch<T>(
        &mut self,
        first: usize,
        len: usize,
        run: impl FnOnce(&mut dyn NoiseSource) -> T,
    ) -> T {
        match self {
            Self::PerImage { seed } => run(&mut PerImageNoise::new(*seed, first as u64, len)),
            Self::Global(g) => run(g),
        }
    }
}
