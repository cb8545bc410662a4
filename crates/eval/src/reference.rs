//! Training, saving and loading a feature classifier — the shipped Fashion-MNIST reference
//! (`checkpoints/fashion-mnist-lenet.*`) or one for any labelled difflab dataset.
//!
//! Training is deterministic: `tch::manual_seed(seed)` before the layers are created (under
//! difflab's generator lock, so no other thread draws in between) fixes the initialisation,
//! and epoch `e` visits the train part in the order
//! `difflab_data::epoch_permutation(len, seed, e)`; there is no dropout or data
//! augmentation. Adam (lr 1e-3, cosine decay to 0 over all steps), cross-entropy, batch 128.
//! On one machine with a fixed thread count the weights (and so their SHA-256) are identical
//! run to run; other CPUs or BLAS builds may differ in the last bits.
//!
//! Files written for weights `PATH.safetensors`:
//! - `PATH.safetensors`: the weights (f32, names sorted),
//! - `PATH.json`: [`ReferenceMeta`] — seed, epochs, test accuracy, SHA-256 of the weights, spec,
//!   the data config (so evaluation can find the real images again), floor values,
//! - `PATH.test-stats.safetensors`: mean `[D]`, covariance `[D, D]` (f64) and count of the
//!   features of the whole test part.

use std::path::{Path, PathBuf};
use std::time::Instant;

use difflab_data::{DataConfig, DataKind, FASHION_MNIST_CLASSES, epoch_permutation};
use difflab_pipeline::checkpoint::load_weights;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::EvalError;
use crate::classifier::{ClassifierSpec, LeNet};
use crate::features::extract_features;
use crate::frechet::{FeatureStats, frechet_distance};
use crate::real_data::{Part, RealData, split_rule};

/// File stem of the shipped reference in `checkpoints/`.
pub const REFERENCE_STEM: &str = "fashion-mnist-lenet";

/// The shipped reference's weights file, relative to the repository root.
pub const REFERENCE_WEIGHTS: &str = "checkpoints/fashion-mnist-lenet.safetensors";

/// The metadata file and the test-statistics file that belong to a weights file
/// `PATH.safetensors`: `PATH.json` and `PATH.test-stats.safetensors`.
pub fn reference_paths(weights: &Path) -> (PathBuf, PathBuf) {
    let stem = weights.with_extension("");
    let name = stem
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        stem.with_file_name(format!("{name}.json")),
        stem.with_file_name(format!("{name}.test-stats.safetensors")),
    )
}

/// How to train a classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// Passes over the train part.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak Adam learning rate (cosine-decayed to 0).
    pub lr: f64,
    /// Stop after this many steps (tests); `None` runs every epoch.
    pub max_steps: Option<usize>,
    /// Width of the feature layer.
    pub feature_dim: i64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            epochs: 3,
            batch_size: 128,
            lr: 1e-3,
            max_steps: None,
            feature_dim: 128,
        }
    }
}

/// What is recorded next to a classifier's weights (`PATH.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceMeta {
    /// Architecture name (`lenet`).
    pub architecture: String,
    /// Input size, channels, classes, feature width.
    pub spec: ClassifierSpec,
    /// How it was trained.
    pub training: TrainOptions,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Top-1 accuracy on the whole test part.
    pub test_accuracy: f64,
    /// Examples in the train part.
    pub train_examples: usize,
    /// Examples in the test part.
    pub test_examples: usize,
    /// How train and test parts were made.
    pub split: String,
    /// Hex SHA-256 of the weights file.
    pub weights_sha256: String,
    /// Wall-clock training time (informative).
    pub training_seconds: f64,
    /// libtorch intra-op threads used for training (informative).
    pub threads: i64,
    /// The data the classifier was trained on: evaluation opens it again for the real images.
    pub data: DataConfig,
    /// The experiment seed that fixes procedural data.
    pub data_seed: u64,
    /// Class names, when the dataset has them.
    pub class_names: Option<Vec<String>>,
    /// Classifier-FID of the whole train part (up to 10 000 images) against the test
    /// statistics: the floor at that sample size.
    pub floor_cfid: f64,
    /// How many train images `floor_cfid` used.
    pub floor_cfid_n: usize,
}

/// A trained classifier with its metadata.
pub struct ReferenceClassifier {
    /// The variables (keep alive while `net` is used).
    pub vs: nn::VarStore,
    /// The network.
    pub net: LeNet,
    /// Its metadata.
    pub meta: ReferenceMeta,
    /// Its weights file, when loaded from or saved to one.
    pub path: Option<PathBuf>,
}

impl std::fmt::Debug for ReferenceClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceClassifier")
            .field("meta", &self.meta)
            .field("path", &self.path)
            .finish()
    }
}

/// Hex SHA-256 of a file (the pipeline's, recorded next to checkpoints and samples too).
pub fn sha256_file(path: &Path) -> Result<String, EvalError> {
    Ok(difflab_pipeline::checkpoint::sha256_file(path)?)
}

/// Accuracy of `net` on images with labels.
fn accuracy(
    net: &LeNet,
    images: &Tensor,
    labels: &Tensor,
    device: Device,
) -> Result<f64, EvalError> {
    let out = extract_features(net, images, 500, device)?;
    Ok(out
        .predictions
        .eq_tensor(labels)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]))
}

/// Train a [`LeNet`] on the train part of `data` (which must have `label_mode: class`) and
/// measure it on the test part. `progress` receives a line now and then. Returns the
/// classifier (metadata complete except `weights_sha256`, filled by [`save_classifier`]) and
/// the feature statistics of the whole test part.
pub fn train_classifier(
    data: &DataConfig,
    data_seed: u64,
    options: &TrainOptions,
    device: Device,
    progress: &mut dyn FnMut(&str),
) -> Result<(ReferenceClassifier, FeatureStats), EvalError> {
    let started = Instant::now();
    let train = RealData::open(data, Part::Train, data_seed)?;
    let test = RealData::open(data, Part::Test, data_seed)?;
    if train.labels().is_none() {
        return Err(EvalError::Input(
            "training a classifier needs class labels: set data.label_mode: class".into(),
        ));
    }
    progress(&format!(
        "train part: {} examples, test part: {} ({})",
        train.len(),
        test.len(),
        split_rule(data)
    ));
    let (train_x, train_y) = train.load_all()?;
    let train_y = train_y.expect("labels");
    let (test_x, test_y) = test.load_all()?;
    let test_y = test_y.expect("labels");
    let shape = train_x.size();
    let num_classes = (train_y
        .max()
        .int64_value(&[])
        .max(test_y.max().int64_value(&[])))
        + 1;
    let spec = ClassifierSpec {
        input_size: shape[2].max(shape[3]),
        channels: shape[1],
        num_classes,
        feature_dim: options.feature_dim,
    };

    let vs = nn::VarStore::new(device);
    let net = {
        // The initial weights come from the seed alone: no other thread's draws in between.
        let _rng = difflab_samplers::generator_lock();
        tch::manual_seed(options.seed as i64);
        LeNet::new(&vs.root(), &spec)
    };
    let mut opt = nn::Adam::default()
        .build(&vs, options.lr)
        .map_err(EvalError::Torch)?;
    let n = train.len();
    let batch = options.batch_size.max(1);
    let per_epoch = n.div_ceil(batch);
    let total = options
        .max_steps
        .unwrap_or(usize::MAX)
        .min(per_epoch * options.epochs);
    let mut step = 0;
    'epochs: for epoch in 0..options.epochs {
        let order = epoch_permutation(n, options.seed, epoch as u64);
        let mut loss_sum = 0.0;
        let mut loss_count = 0;
        for chunk in order.chunks(batch) {
            if step >= total {
                break 'epochs;
            }
            let lr = options.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            opt.set_lr(lr);
            let idx = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let x = crate::features::prepare_images(&train_x.index_select(0, &idx), &spec)?
                .to_device(device);
            let y = train_y.index_select(0, &idx).to_device(device);
            let loss = net.logits(&x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            loss_count += 1;
            step += 1;
            if step % 100 == 0 {
                progress(&format!(
                    "epoch {} step {step}/{total}: loss {:.4}",
                    epoch + 1,
                    loss_sum / loss_count as f64
                ));
                loss_sum = 0.0;
                loss_count = 0;
            }
        }
    }
    let training_seconds = started.elapsed().as_secs_f64();
    let test_accuracy = accuracy(&net, &test_x, &test_y, device)?;
    progress(&format!(
        "trained {step} steps in {training_seconds:.1} s; test accuracy {:.2}%",
        100.0 * test_accuracy
    ));
    let test_features = extract_features(&net, &test_x, 500, device)?.features;
    let stats = FeatureStats::from_features(&test_features)?;
    let floor_n = n.min(10_000);
    let floor_pick: Vec<i64> = epoch_permutation(n, options.seed, u64::MAX)[..floor_n]
        .iter()
        .map(|&i| i as i64)
        .collect();
    let floor_x = train_x.index_select(0, &Tensor::from_slice(&floor_pick));
    let floor_features = extract_features(&net, &floor_x, 500, device)?.features;
    let floor_cfid = frechet_distance(&FeatureStats::from_features(&floor_features)?, &stats)?;
    let meta = ReferenceMeta {
        architecture: "lenet".into(),
        spec,
        training: options.clone(),
        steps: step,
        test_accuracy,
        train_examples: n,
        test_examples: test.len(),
        split: split_rule(data).into(),
        weights_sha256: String::new(),
        training_seconds,
        threads: tch::get_num_threads() as i64,
        data: data.clone(),
        data_seed,
        class_names: (data.kind == DataKind::FashionMnist).then(|| {
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        floor_cfid,
        floor_cfid_n: floor_n,
    };
    Ok((
        ReferenceClassifier {
            vs,
            net,
            meta,
            path: None,
        },
        stats,
    ))
}

/// Write `PATH.safetensors` (names sorted, f32), the test statistics and `PATH.json` with the
/// weights' SHA-256 (see the module docs). Creates the parent folder.
pub fn save_classifier(
    classifier: &mut ReferenceClassifier,
    stats: &FeatureStats,
    weights: &Path,
) -> Result<(), EvalError> {
    if let Some(parent) = weights.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::file(parent, e))?;
    }
    let mut named: Vec<(String, Tensor)> = classifier
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.to_device(Device::Cpu).to_kind(Kind::Float)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, weights).map_err(|e| EvalError::file(weights, e))?;
    let (json, stats_path) = reference_paths(weights);
    Tensor::write_safetensors(&stats.to_named(), &stats_path)
        .map_err(|e| EvalError::file(&stats_path, e))?;
    classifier.meta.weights_sha256 = sha256_file(weights)?;
    let text = serde_json::to_string_pretty(&classifier.meta).expect("serialisable") + "\n";
    std::fs::write(&json, text).map_err(|e| EvalError::file(&json, e))?;
    classifier.path = Some(weights.to_path_buf());
    Ok(())
}

impl ReferenceClassifier {
    /// Load weights `PATH.safetensors` with their `PATH.json`, checking the file's SHA-256
    /// against the recorded one (a mismatch is an error: the metrics would not be comparable).
    pub fn load(weights: &Path, device: Device) -> Result<Self, EvalError> {
        let (json, _) = reference_paths(weights);
        let text = std::fs::read_to_string(&json).map_err(|e| EvalError::file(&json, e))?;
        let meta: ReferenceMeta =
            serde_json::from_str(&text).map_err(|e| EvalError::file(&json, e))?;
        let hash = sha256_file(weights)?;
        if hash != meta.weights_sha256 {
            return Err(EvalError::file(
                weights,
                format!(
                    "SHA-256 {hash} differs from {} recorded in {}",
                    meta.weights_sha256,
                    json.display()
                ),
            ));
        }
        let mut vs = nn::VarStore::new(device);
        let net = LeNet::new(&vs.root(), &meta.spec);
        load_weights(&mut vs, weights)?;
        Ok(Self {
            vs,
            net,
            meta,
            path: Some(weights.to_path_buf()),
        })
    }

    /// The recorded test statistics (`PATH.test-stats.safetensors`), when the file exists.
    pub fn test_stats(&self) -> Result<Option<FeatureStats>, EvalError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let (_, stats) = reference_paths(path);
        if !stats.exists() {
            return Ok(None);
        }
        FeatureStats::load(&stats).map(Some)
    }
}
