//! The `data:` section of an experiment config: one flat struct, so that
//! `--set data.kind=shapes` or `--set data.resolution=64` work from the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DataError;

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files; the default
/// `path` of `kind: fashion_mnist`.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The training data. Every key has a default; the default (`kind: shapes`) needs nothing
/// downloaded.
///
/// ```yaml
/// data:
///   kind: folder            # folder | fashion_mnist | shapes | toy2d
///   path: data/anime        # folder root; for fashion_mnist the folder of the IDX files
///   resolution: 64          # shorter side resized to this, then centre-cropped square
///   channels: 3             # 1 or 3
///   on_bad_file: fail       # fail | skip
///   hflip: true             # random horizontal flip (a pure function of seed, epoch, index)
///   labels: data/labels.csv # `file,label` rows, see the `data` module docs
///   label_mode: multi_hot   # none | class | multi_hot
///   cond_images: null       # `file,cond_file` rows for paired image-to-image data
///   split: train            # train | test (fashion_mnist)
///   limit: null             # only the first N examples
///   workers: 2              # decode threads
///   shapes: {num_images: 2000, seed_offset: 0}
///   toy2d: {dataset: spiral, num_points: 10000, noise: null, seed_offset: 0}
///   lowres: null            # SR stages: side of the low-resolution input (area-downsampled)
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Which dataset.
    pub kind: DataKind,
    /// The folder root (`folder`), or the folder holding the IDX files (`fashion_mnist`,
    /// default [`DEFAULT_FASHION_MNIST_DIR`]). Unused by `shapes` and `toy2d`.
    pub path: Option<PathBuf>,
    /// Output side length in pixels: the shorter side is resized to this, then the image is
    /// centre-cropped to a square.
    pub resolution: i64,
    /// 1 (luma) or 3 (RGB). Alpha is composited on white; gray is repeated to RGB; RGB is
    /// reduced to luma with the Rec. 601 weights (0.299, 0.587, 0.114).
    pub channels: i64,
    /// What a file that cannot be read or decoded does: stop training, or be logged and skipped.
    pub on_bad_file: BadFilePolicy,
    /// Random horizontal flip of images (and of their paired conditioning images).
    pub hflip: bool,
    /// Labels CSV for `folder` data (rows `file,label` or `file,name1;name2`).
    pub labels: Option<PathBuf>,
    /// Which labels examples carry: none, one class index, or a multi-hot vector.
    pub label_mode: LabelMode,
    /// Pairs CSV for `folder` data (rows `file,cond_file`): each image's conditioning image.
    pub cond_images: Option<PathBuf>,
    /// Which split of `fashion_mnist`.
    pub split: Split,
    /// Use only the first N examples (in dataset order).
    pub limit: Option<usize>,
    /// Decode threads of the data loader.
    pub workers: usize,
    /// Settings of `kind: shapes`.
    pub shapes: ShapesConfig,
    /// Settings of `kind: toy2d`.
    pub toy2d: Toy2dConfig,
    /// For super-resolution stages (`model.kind: sr_unet`): the side of the low-resolution
    /// input, made from each `resolution`² image by area downsampling; must divide
    /// `resolution`.
    pub lowres: Option<i64>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            kind: DataKind::Shapes,
            path: None,
            resolution: 32,
            channels: 3,
            on_bad_file: BadFilePolicy::Fail,
            hflip: false,
            labels: None,
            label_mode: LabelMode::None,
            cond_images: None,
            split: Split::Train,
            limit: None,
            workers: 2,
            shapes: ShapesConfig::default(),
            toy2d: Toy2dConfig::default(),
            lowres: None,
        }
    }
}

/// The most decode threads a config may ask for.
pub const MAX_WORKERS: usize = 256;

/// The most images (points) a synthetic dataset may have: 100 million.
pub const MAX_SYNTHETIC: usize = 100_000_000;

impl DataConfig {
    /// Range and combination checks; the error names the key and value.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Config(m));
        if !(1..=8192).contains(&self.resolution) {
            return bad(format!(
                "data.resolution: {} is outside 1..=8192",
                self.resolution
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(format!("data.channels: {} is not 1 or 3", self.channels));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return bad(format!(
                "data.workers: {} is outside 1..={MAX_WORKERS} (each worker is a thread)",
                self.workers
            ));
        }
        if self.limit == Some(0) {
            return bad("data.limit: 0 leaves no examples".into());
        }
        if let Some(r) = self.lowres {
            if self.kind == DataKind::Toy2d {
                return bad("data.lowres: toy2d data are points, not images".into());
            }
            if r < 1 || r >= self.resolution || self.resolution % r != 0 {
                return bad(format!(
                    "data.lowres: {r} must be smaller than data.resolution ({}) and divide it",
                    self.resolution
                ));
            }
        }
        let folder_only = [
            ("labels", self.labels.is_some()),
            ("cond_images", self.cond_images.is_some()),
        ];
        for (key, set) in folder_only {
            if set && self.kind != DataKind::Folder {
                return bad(format!(
                    "data.{key} applies only to kind: folder (kind is {})",
                    self.kind.name()
                ));
            }
        }
        match self.kind {
            DataKind::Folder => {
                if self.path.is_none() {
                    return bad("data.path is required for kind: folder".into());
                }
                if self.label_mode != LabelMode::None && self.labels.is_none() {
                    return bad(format!(
                        "data.label_mode: {} needs data.labels (a CSV file)",
                        self.label_mode.name()
                    ));
                }
                if self.label_mode == LabelMode::None && self.labels.is_some() {
                    return bad(
                        "data.labels is set but data.label_mode is none: choose class or multi_hot"
                            .into(),
                    );
                }
            }
            DataKind::Toy2d => {
                if self.label_mode != LabelMode::None {
                    return bad("data.label_mode: toy2d data has no labels (use none)".into());
                }
                if self.hflip {
                    return bad("data.hflip: toy2d data are points, not images".into());
                }
                self.toy2d.validate()?;
            }
            DataKind::Shapes => self.shapes.validate()?,
            DataKind::FashionMnist => {}
        }
        Ok(())
    }

    /// The folder of the Fashion-MNIST IDX files: `path`, or [`DEFAULT_FASHION_MNIST_DIR`].
    pub fn fashion_mnist_dir(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_FASHION_MNIST_DIR).to_path_buf())
    }
}

/// Which dataset `open_dataset` builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Image files under a folder (png, jpg, jpeg), decoded on demand.
    Folder,
    /// Fashion-MNIST from its IDX files (raw or gzipped).
    FashionMnist,
    /// Procedural coloured circles, squares and triangles (nothing to download).
    #[default]
    Shapes,
    /// 2-D points: spiral, disc grid or eight Gaussians.
    Toy2d,
}

impl DataKind {
    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Folder => "folder",
            Self::FashionMnist => "fashion_mnist",
            Self::Shapes => "shapes",
            Self::Toy2d => "toy2d",
        }
    }
}

/// What to do with a file that cannot be read or decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadFilePolicy {
    /// `next_batch` returns an error naming the file.
    #[default]
    Fail,
    /// Log the path once, count it, and use the next example in the order instead.
    Skip,
}

/// Which labels examples carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelMode {
    /// No labels.
    #[default]
    None,
    /// One class index per example (`Batch::class_labels`, int64).
    Class,
    /// A multi-hot vector per example (`Batch::label_vector`, f32).
    MultiHot,
}

impl LabelMode {
    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Class => "class",
            Self::MultiHot => "multi_hot",
        }
    }
}

/// A dataset split (Fashion-MNIST has `train`, 60 000 images, and `test`, 10 000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training split.
    #[default]
    Train,
    /// The held-out split.
    Test,
}

/// Settings of the procedural `shapes` dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapesConfig {
    /// How many images the dataset holds (each generated from (seed, index)).
    pub num_images: usize,
    /// Added to the experiment seed: a different set of images for the same run seed.
    pub seed_offset: u64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self {
            num_images: 2000,
            seed_offset: 0,
        }
    }
}

impl ShapesConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.num_images > MAX_SYNTHETIC {
            return Err(DataError::Config(format!(
                "data.shapes.num_images: {} is more than {MAX_SYNTHETIC} (the images are drawn on the fly, but their index is kept in memory)",
                self.num_images
            )));
        }
        if self.num_images == 0 {
            return Err(DataError::Config(
                "data.shapes.num_images: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Which 2-D toy distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toy2dKind {
    /// The seed notebook's spiral: 1.5 turns, radius 0.25 → 1.05.
    #[default]
    Spiral,
    /// A 4×4 grid of small discs with centres at {−1, −⅓, ⅓, 1}².
    DiscGrid,
    /// Eight Gaussians with centres on the unit circle.
    EightGaussians,
}

impl Toy2dKind {
    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Spiral => "spiral",
            Self::DiscGrid => "disc_grid",
            Self::EightGaussians => "eight_gaussians",
        }
    }

    /// The spread used when `noise` is null: the spiral's radial band width (0.15), the disc
    /// radius (0.1), or the Gaussians' standard deviation (0.05).
    pub fn default_noise(self) -> f32 {
        match self {
            Self::Spiral => 0.15,
            Self::DiscGrid => 0.1,
            Self::EightGaussians => 0.05,
        }
    }
}

/// Settings of the `toy2d` dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toy2dConfig {
    /// Which distribution.
    pub dataset: Toy2dKind,
    /// How many points the dataset holds.
    pub num_points: usize,
    /// The spread around the ideal shape (see [`Toy2dKind::default_noise`]); null = default.
    pub noise: Option<f32>,
    /// Added to the experiment seed: a different point set for the same run seed.
    pub seed_offset: u64,
}

impl Default for Toy2dConfig {
    fn default() -> Self {
        Self {
            dataset: Toy2dKind::Spiral,
            num_points: 10_000,
            noise: None,
            seed_offset: 0,
        }
    }
}

impl Toy2dConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.num_points > MAX_SYNTHETIC {
            return Err(DataError::Config(format!(
                "data.toy2d.num_points: {} is more than {MAX_SYNTHETIC} (the points are kept in memory)",
                self.num_points
            )));
        }
        if self.num_points == 0 {
            return Err(DataError::Config(
                "data.toy2d.num_points: must be at least 1".into(),
            ));
        }
        if let Some(noise) = self.noise
            && !(noise.is_finite() && noise >= 0.0)
        {
            return Err(DataError::Config(format!(
                "data.toy2d.noise: {noise} is not a finite number >= 0"
            )));
        }
        Ok(())
    }

    /// The spread actually used: `noise`, or the dataset's default.
    pub fn noise_or_default(&self) -> f32 {
        self.noise.unwrap_or_else(|| self.dataset.default_noise())
    }
}
