//! Training data: datasets (image folders, Fashion-MNIST, procedural shapes, 2-D toys) behind
//! one [`Dataset`] trait, and a [`DataLoader`] that shuffles, decodes in parallel, prefetches
//! and resumes exactly from a [`DataCursor`].
//!
//! # Values and shapes
//!
//! Images are `[C, H, W]` f32 in [−1, 1] (pixel `p` in [0, 255] ↦ `p/127.5 − 1`), with
//! `H = W = resolution`; toy points are `[2]`.
//!
//! # Image preprocessing (folder, and conditioning images)
//!
//! 1. Decode (png, jpg, jpeg; 8 or 16 bit; EXIF orientation applied) to floats in [0, 1].
//! 2. Alpha is composited on **white** (`c·a + (1 − a)`), the usual choice for sprites, emoji
//!    and icons drawn on transparent backgrounds.
//! 3. `channels: 3` repeats gray; `channels: 1` reduces RGB to luma with the Rec. 601 weights
//!    (0.299, 0.587, 0.114; PIL's `convert("L")`).
//! 4. The shorter side is resized to `resolution` (aspect kept) with a Catmull-Rom cubic whose
//!    support grows with the downscale factor, so a large reduction averages every source pixel
//!    under each output pixel (area-like, no aliasing, PIL's antialiased bicubic); results are
//!    clamped to [0, 1] (no cubic overshoot). Then the centre square is cropped.
//!
//! Fashion-MNIST's 28×28 images are resized the same way but with a linear (tent) filter when
//! `resolution` ≠ 28; `channels: 3` repeats the gray channel.
//!
//! # CSV files (folder datasets)
//!
//! Plain comma-separated text, UTF-8. Blank lines and lines starting with `#` are ignored; a
//! first line `file,label`, `file,labels` or `file,cond_file` is a header and is skipped. Fields
//! may be double-quoted (`"a, b.png",cat`; `""` inside quotes is a quote). Every row has exactly
//! two fields. `file` is relative to `data.path` with `/` separators, exactly as found by the
//! folder walk (e.g. `cats/001.png`). Errors name `csv_path:line`.
//!
//! **Labels** (`data.labels`): `file,label` where `label` is one or more names separated by
//! `;` (`beach.png,sea;sky;sand`; whitespace around names is trimmed). `label_mode: class`
//! needs exactly one name per row; `multi_hot` takes any number (an empty field is an all-zero
//! vector). If every name in the file is a non-negative integer, names are class indices and
//! the number of classes is the largest + 1; otherwise names map to indices in sorted
//! (byte-wise) order of the distinct names, so the mapping is stable whatever the row order
//! ([`Dataset::label_names`] returns it). Every image under the folder needs a row, and every
//! row must name an image under the folder; a file listed twice is an error.
//!
//! **Paired conditioning images** (`data.cond_images`): `file,cond_file`; `cond_file` is
//! relative to the directory holding the CSV (or absolute), so conditioning images can live
//! outside `data.path` (they must, or the walk would take them as training images). Each
//! conditioning image is preprocessed exactly like the main one (same resolution and channels)
//! and flipped together with it.
//!
//! # Determinism
//!
//! [`Dataset::get`] is a pure function of the index. Epoch `e` visits the permutation of
//! `0..len` drawn with `ChaCha8Rng` seeded from `(seed, e)`; the flip of an example is drawn
//! from `(seed, e, dataset index)`. A batch always holds `batch_size` examples: the last one of
//! an epoch wraps into the next epoch. So a `(seed, cursor)` pair fixes every following batch
//! bit for bit, whatever the number of worker threads.
#![forbid(unsafe_code)]

mod config;
mod csv;
mod fashion_mnist;
mod folder;
pub mod images;
mod loader;
mod rng;
mod shapes;
mod toy2d;
mod transform;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::{
    BadFilePolicy, DEFAULT_FASHION_MNIST_DIR, DataConfig, DataKind, LabelMode, ShapesConfig, Split,
    Toy2dConfig, Toy2dKind,
};
pub use fashion_mnist::{FASHION_MNIST_CLASSES, FashionMnist, IdxArray, read_idx};
pub use folder::{FolderDataset, list_images};
pub use loader::{Batch, DataCursor, DataLoader, epoch_permutation, flip_decision};
pub use shapes::{SHAPE_COLORS, SHAPE_NAMES, ShapesDataset, render_shape};
pub use toy2d::{Toy2dDataset, sample_toy2d, sample_toy2d_with_noise, spiral_distance};
pub use transform::{MAX_PIXELS, decode_file, load_image};

/// A dataset could not be opened, or an example could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A `data:` key has a value out of range or inconsistent with another key.
    #[error("{0}")]
    Config(String),
    /// The configured path does not exist.
    #[error("{what} {path} does not exist")]
    MissingPath {
        /// What the path was meant to be (`data.path`, `labels CSV`, ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A folder dataset with no png/jpg/jpeg file under its root.
    #[error("no png/jpg/jpeg images under {0}")]
    EmptyFolder(PathBuf),
    /// A malformed or inconsistent row of a CSV file.
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// An inconsistency between a CSV file and the folder (not tied to one row).
    #[error("{}: {message}", path.display())]
    Labels {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, so not a `source`: it would print twice).
        error: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {}: {message}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// A malformed IDX file (bad magic number, dimensions or length).
    #[error("bad IDX file {}: {message}", path.display())]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An index past the end of the dataset.
    #[error("example {index} is out of range (dataset has {len})")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// With `on_bad_file: skip`, a whole epoch's worth of examples in a row failed.
    #[error("{skipped} examples in a row could not be loaded; the last was: {last}")]
    NoGoodExamples {
        /// How many were skipped in a row.
        skipped: usize,
        /// The last error.
        last: Box<DataError>,
    },
    /// The loader's background thread died (a panic in a dataset).
    #[error("data loader thread failed: {0}")]
    Loader(String),
}

impl DataError {
    /// `Ok` when `index < len`, else [`DataError::OutOfRange`]: every dataset's `get` checks this.
    pub fn check_index(index: usize, len: usize) -> Result<(), Self> {
        if index < len {
            Ok(())
        } else {
            Err(Self::OutOfRange { index, len })
        }
    }

    /// True for errors about one example's file (unreadable or undecodable): the ones
    /// `on_bad_file: skip` skips.
    pub fn is_bad_file(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Decode { .. })
    }

    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::MissingPath { path, .. }
            | Self::Csv { path, .. }
            | Self::Labels { path, .. }
            | Self::Io { path, .. }
            | Self::Decode { path, .. }
            | Self::Idx { path, .. } => Some(path),
            Self::EmptyFolder(path) => Some(path),
            _ => None,
        }
    }
}

/// One training example, on the CPU, as plain vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The example, flattened: `C·H·W` values in [−1, 1] for images, `D` for points.
    pub data: Vec<f32>,
    /// Class index, when the dataset has `label_mode: class`.
    pub class: Option<i64>,
    /// Multi-hot label vector, when the dataset has `label_mode: multi_hot`.
    pub labels: Option<Vec<f32>>,
    /// The paired conditioning image (`C·H·W`), when the dataset has one.
    pub cond: Option<Vec<f32>>,
}

/// A finite, indexable dataset. Implementations are cheap to share between threads.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// True when there are no examples (`open_dataset` never returns an empty dataset).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Example `index`, a deterministic function of the index (no flip: the loader flips).
    fn get(&self, index: usize) -> Result<Example, DataError>;
    /// The shape of one example's data: `[C, H, W]` or `[D]`.
    fn shape(&self) -> Vec<i64>;
    /// Number of classes, when examples carry a class index.
    fn num_classes(&self) -> Option<i64>;
    /// Length of the multi-hot label vector, when examples carry one.
    fn label_dim(&self) -> Option<i64>;
    /// The shape of the conditioning image, when examples carry one.
    fn cond_shape(&self) -> Option<Vec<i64>>;
    /// One line for logs: kind, source, size, shape, labels.
    fn describe(&self) -> String;
    /// Whether the loader should apply random horizontal flips (image datasets with
    /// `hflip: true`).
    fn hflip(&self) -> bool {
        false
    }
    /// The name of each class or label index, when known (sample-grid captions, logs).
    fn label_names(&self) -> Option<Vec<String>> {
        None
    }
}

/// Build the dataset a config describes. Fails fast, before any training: invalid keys, a
/// missing path, an empty folder (naming the path), a malformed CSV (naming `file:line`), a CSV
/// row for a file not under the folder, malformed IDX files. Folder images are decoded later, on
/// demand, so a corrupt image only shows up when the loader reaches it.
///
/// `seed` is the experiment seed: it (plus `seed_offset`) fixes the `shapes` and `toy2d` data.
pub fn open_dataset(config: &DataConfig, seed: u64) -> Result<Arc<dyn Dataset>, DataError> {
    config.validate()?;
    Ok(match config.kind {
        DataKind::Folder => Arc::new(FolderDataset::open(config)?),
        DataKind::FashionMnist => Arc::new(FashionMnist::open(config)?),
        DataKind::Shapes => Arc::new(ShapesDataset::new(config, seed)),
        DataKind::Toy2d => Arc::new(Toy2dDataset::new(config, seed)),
    })
}

/// `limit` applied to a length.
fn limited(len: usize, limit: Option<usize>) -> usize {
    limit.map_or(len, |l| l.min(len))
}
