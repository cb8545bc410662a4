//! `kind: fashion_mnist`: Zalando's Fashion-MNIST (Xiao et al. 2017) from its IDX files,
//! held in memory as bytes (60 000 × 28 × 28 = 47 MB for the train split).
//!
//! Files, in `data.path` (default `/usr/share/datasets/fashion-mnist`, where Debian's
//! `dataset-fashion-mnist` package puts them): `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or
//! gzipped (`.gz`; detected by content). Any IDX image file of `[N, H, W]` bytes with labels
//! 0..=9 loads, so MNIST itself works too.
//!
//! `label_mode: class` gives the label index ([`FASHION_MNIST_CLASSES`] names them);
//! `multi_hot` gives its one-hot vector of length 10.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::transform::{Filter, Planes, resize_shorter_and_crop, to_model_range};
use super::{DataConfig, DataError, Dataset, Example, LabelMode, Split, limited};

/// The ten Fashion-MNIST classes, by label index.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A decoded IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Read an IDX file of unsigned bytes (type code 0x08), raw or gzipped. Checks the magic
/// number (`00 00 08 D` with D dimensions) and that the data length matches the dimensions.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bad = |message: String| DataError::Idx {
        path: path.to_path_buf(),
        message,
    };
    let raw = std::fs::read(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(bad(format!("only {} bytes, no header", bytes.len())));
    }
    let magic = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic number {magic:#010x} does not start with two zero bytes"
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "magic number {magic:#010x}: element type {:#04x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(bad(format!("magic number {magic:#010x}: zero dimensions")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {ndim} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found != expected {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected} bytes of data, file has {found}"
        )));
    }
    let mut bytes = bytes;
    bytes.drain(..header);
    Ok(IdxArray { dims, data: bytes })
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(DataError::MissingPath {
        what: "Fashion-MNIST file (raw or .gz)",
        path: dir.join(name),
    })
}

/// Fashion-MNIST (or MNIST) images with their class labels.
#[derive(Debug)]
pub struct FashionMnist {
    dir: PathBuf,
    split: Split,
    images: Vec<u8>,
    labels: Vec<u8>,
    total: usize,
    len: usize,
    height: usize,
    width: usize,
    resolution: usize,
    channels: usize,
    hflip: bool,
    label_mode: LabelMode,
}

impl FashionMnist {
    /// Read and check the split's two IDX files.
    pub fn open(config: &DataConfig) -> Result<Self, DataError> {
        let dir = config.fashion_mnist_dir();
        if !dir.is_dir() {
            return Err(DataError::MissingPath {
                what: "Fashion-MNIST folder",
                path: dir,
            });
        }
        let prefix = match config.split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let image_path = find(&dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let label_path = find(&dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_idx(&image_path)?;
        let labels = read_idx(&label_path)?;
        let [n, height, width] = images.dims[..] else {
            return Err(DataError::Idx {
                path: image_path,
                message: format!(
                    "expected [N, H, W] images, found dimensions {:?}",
                    images.dims
                ),
            });
        };
        if n == 0 || height == 0 || width == 0 {
            return Err(DataError::Idx {
                path: image_path,
                message: format!("empty image array {:?}", images.dims),
            });
        }
        if labels.dims != [n] {
            return Err(DataError::Idx {
                path: label_path,
                message: format!(
                    "expected [{n}] labels to match {}, found dimensions {:?}",
                    image_path.display(),
                    labels.dims
                ),
            });
        }
        if let Some((i, l)) = labels.data.iter().enumerate().find(|(_, l)| **l > 9) {
            return Err(DataError::Idx {
                path: label_path,
                message: format!("label {l} of example {i} is outside 0..=9"),
            });
        }
        Ok(Self {
            dir,
            split: config.split,
            images: images.data,
            labels: labels.data,
            total: n,
            len: limited(n, config.limit),
            height,
            width,
            resolution: config.resolution as usize,
            channels: config.channels as usize,
            hflip: config.hflip,
            label_mode: config.label_mode,
        })
    }

    /// The label (0..=9) of example `index`.
    pub fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        DataError::check_index(index, self.len)?;
        let n = self.height * self.width;
        let pixels = &self.images[index * n..(index + 1) * n];
        let mut planes = Planes {
            c: 1,
            h: self.height,
            w: self.width,
            data: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        };
        if (self.height, self.width) != (self.resolution, self.resolution) {
            planes = resize_shorter_and_crop(&planes, self.resolution, Filter::Linear);
        }
        let gray = to_model_range(planes.data);
        let data = if self.channels == 3 {
            gray.repeat(3)
        } else {
            gray
        };
        let label = self.labels[index];
        Ok(Example {
            data,
            class: (self.label_mode == LabelMode::Class).then_some(label as i64),
            labels: (self.label_mode == LabelMode::MultiHot).then(|| {
                let mut v = vec![0.0; 10];
                v[label as usize] = 1.0;
                v
            }),
            cond: None,
        })
    }

    fn shape(&self) -> Vec<i64> {
        let r = self.resolution as i64;
        vec![self.channels as i64, r, r]
    }

    fn num_classes(&self) -> Option<i64> {
        (self.label_mode == LabelMode::Class).then_some(10)
    }

    fn label_dim(&self) -> Option<i64> {
        (self.label_mode == LabelMode::MultiHot).then_some(10)
    }

    fn cond_shape(&self) -> Option<Vec<i64>> {
        None
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "fashion_mnist {} ({}): {} images",
            self.dir.display(),
            match self.split {
                Split::Train => "train",
                Split::Test => "test",
            },
            self.total
        );
        if self.len < self.total {
            s += &format!(" (first {} used)", self.len);
        }
        s += &format!(
            ", {}x{} -> {:?}, labels: {}",
            self.height,
            self.width,
            self.shape(),
            self.label_mode.name()
        );
        if self.hflip {
            s += ", hflip";
        }
        s
    }

    fn hflip(&self) -> bool {
        self.hflip
    }

    fn label_names(&self) -> Option<Vec<String>> {
        Some(
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }
}
