//! The real images a classifier is trained on and measured against: the "train" and "test"
//! parts of any labelled difflab dataset.
//!
//! Fashion-MNIST has both splits (`train`: 60 000, `test`: 10 000). Any other dataset with
//! class labels (`label_mode: class`) is split deterministically by index: every tenth example
//! (`index % 10 == 9`) is held out as the test part, the rest is the train part.

use std::sync::Arc;

use difflab_data::{DataConfig, DataKind, Dataset, LabelMode, Split, open_dataset};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::EvalError;

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// What the classifier trains on (and the floor's stand-in for "generated" samples).
    Train,
    /// The held-out images the metrics compare against.
    Test,
}

/// One part of a labelled dataset, opened lazily: examples are decoded on [`RealData::load`].
pub struct RealData {
    dataset: Arc<dyn Dataset>,
    /// Dataset indices of this part.
    indices: Vec<usize>,
    labels: Option<Vec<i64>>,
}

impl std::fmt::Debug for RealData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealData")
            .field("dataset", &self.dataset.describe())
            .field("len", &self.indices.len())
            .finish()
    }
}

/// How the parts of `config`'s data are made, in words (recorded next to classifiers).
pub fn split_rule(config: &DataConfig) -> &'static str {
    if config.kind == DataKind::FashionMnist {
        "fashion_mnist split: train (60000) / test (10000)"
    } else {
        "held out by index: index % 10 == 9 is test, the rest train"
    }
}

impl RealData {
    /// Open one part of `config`'s dataset (labels are read when `label_mode` is `class`).
    /// `seed` is the experiment seed (it fixes procedural datasets).
    pub fn open(config: &DataConfig, part: Part, seed: u64) -> Result<Self, EvalError> {
        let mut config = config.clone();
        if config.kind == DataKind::Toy2d {
            return Err(EvalError::Input(
                "toy2d data are points: use the toy metrics, not a classifier".into(),
            ));
        }
        config.hflip = false;
        let split_by_index = config.kind != DataKind::FashionMnist;
        if !split_by_index {
            config.split = match part {
                Part::Train => Split::Train,
                Part::Test => Split::Test,
            };
        }
        let dataset = open_dataset(&config, seed)?;
        let indices: Vec<usize> = (0..dataset.len())
            .filter(|i| !split_by_index || ((i % 10 == 9) == (part == Part::Test)))
            .collect();
        if indices.is_empty() {
            return Err(EvalError::Input(format!(
                "{}: the {part:?} part is empty",
                dataset.describe()
            )));
        }
        let labels = if config.label_mode == LabelMode::Class {
            Some(
                indices
                    .iter()
                    .map(|&i| dataset.get(i).map(|e| e.class.expect("class labels")))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        Ok(Self {
            dataset,
            indices,
            labels,
        })
    }

    /// Number of examples in this part.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when the part is empty (never, after `open`).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The class of each example of the part, when the data has class labels.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// One line describing the dataset.
    pub fn describe(&self) -> String {
        self.dataset.describe()
    }

    /// Decode examples `which` (positions within the part) into `[n, C, H, W]` images in
    /// [−1, 1] and `[n]` labels (when the data has them).
    pub fn load(&self, which: &[usize]) -> Result<(Tensor, Option<Tensor>), EvalError> {
        let shape = self.dataset.shape();
        let mut data = Vec::with_capacity(which.len() * shape.iter().product::<i64>() as usize);
        for &w in which {
            data.extend(self.dataset.get(self.indices[w])?.data);
        }
        let mut full = vec![which.len() as i64];
        full.extend(&shape);
        let images = Tensor::from_slice(&data).view(full.as_slice());
        let labels = self
            .labels
            .as_ref()
            .map(|l| Tensor::from_slice(&which.iter().map(|&w| l[w]).collect::<Vec<_>>()));
        Ok((images, labels))
    }

    /// Decode the whole part.
    pub fn load_all(&self) -> Result<(Tensor, Option<Tensor>), EvalError> {
        self.load(&(0..self.len()).collect::<Vec<_>>())
    }
}
