//! The metric suites `difflab eval` runs: image samples in a classifier's feature space, and
//! 2-D toy samples against fresh true samples. Each returns the metrics, the floor (the same
//! metrics for real data against real data at the same sample size) and details.
//!
//! # Images
//!
//! With N samples and a classifier trained on dataset D (its `ReferenceMeta::data`):
//!
//! | metric | samples vs | floor: real train images (N, seeded pick) vs |
//! |---|---|---|
//! | `cfid` | statistics of the whole test part | the same statistics |
//! | `kid` | N test images (seeded pick) | the same N test images |
//! | `precision`, `recall` (k = 3) | the same N test images | the same N test images |
//! | `class_accuracy` | requested classes (conditional models) | the test images' labels |
//!
//! `details.class_histogram` counts the samples the classifier puts in each class, beside
//! `details.floor_class_histogram` for the real floor images: a generator that collapses onto a
//! few classes shows there even when its feature statistics look passable.
//!
//! With a class filter (`--class K`), every real set is restricted to class K.
//!
//! # Toy
//!
//! `mmd_rbf`, `energy_distance` against N fresh true points; `mode_coverage` of the samples.
//! The floor is a second fresh true sample of N points.

use std::collections::BTreeMap;

use difflab_data::{Toy2dKind, epoch_permutation, sample_toy2d_with_noise};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::EvalError;
use crate::features::extract_features;
use crate::frechet::{FeatureStats, frechet_distance};
use crate::kid::{KidOptions, kid};
use crate::precision_recall::{DEFAULT_K, precision_recall};
use crate::real_data::{Part, RealData};
use crate::reference::ReferenceClassifier;
use crate::toy::{TOY_BANDWIDTHS, energy_distance, mmd_rbf, mode_coverage};

/// Metrics, floor and details of one evaluation.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
    /// Metric name → real-vs-real value.
    pub floor: BTreeMap<String, f64>,
    /// Standard deviations, sizes, per-class numbers.
    pub details: serde_json::Value,
}

/// Settings of [`evaluate_images`].
#[derive(Clone, Debug)]
pub struct ImageEvalOptions {
    /// Seed of the real-image picks and KID subsets.
    pub seed: u64,
    /// Images per classifier forward pass.
    pub batch_size: usize,
    /// Where the classifier runs.
    pub device: Device,
    /// Restrict the real images to this class.
    pub class_filter: Option<i64>,
    /// KID subsets (the seed is taken from `seed`).
    pub kid: KidOptions,
    /// k of precision/recall.
    pub k: usize,
}

impl Default for ImageEvalOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 500,
            device: Device::Cpu,
            class_filter: None,
            kid: KidOptions::default(),
            k: DEFAULT_K,
        }
    }
}

/// `m` positions of `pool` picked by the seeded permutation `stream`.
fn pick(pool: &[usize], m: usize, seed: u64, stream: u64) -> Vec<usize> {
    epoch_permutation(pool.len(), seed, stream)[..m.min(pool.len())]
        .iter()
        .map(|&i| pool[i])
        .collect()
}

/// Positions of a part whose label is `class` (all positions without a filter).
fn positions(data: &RealData, class: Option<i64>) -> Result<Vec<usize>, EvalError> {
    match (class, data.labels()) {
        (None, _) => Ok((0..data.len()).collect()),
        (Some(k), Some(labels)) => {
            let p: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == k).collect();
            if p.is_empty() {
                return Err(EvalError::Input(format!("no real images of class {k}")));
            }
            Ok(p)
        }
        (Some(_), None) => Err(EvalError::Input(
            "a class filter needs data with class labels".into(),
        )),
    }
}

/// Evaluate image samples `[N, C, H, W]` in [−1, 1] in `classifier`'s feature space (see the
/// module docs). `requested` `[N]` holds the class each sample was generated for
/// (class-conditional models): it adds `class_accuracy`.
pub fn evaluate_images(
    classifier: &ReferenceClassifier,
    samples: &Tensor,
    requested: Option<&Tensor>,
    options: &ImageEvalOptions,
) -> Result<Evaluation, EvalError> {
    let n = samples.size()[0] as usize;
    if n <= options.k {
        return Err(EvalError::Input(format!(
            "{n} samples are too few: precision/recall with k = {} need at least {}",
            options.k,
            options.k + 1
        )));
    }
    let meta = &classifier.meta;
    let net = &classifier.net;
    let (batch, device) = (options.batch_size, options.device);
    let test = RealData::open(&meta.data, Part::Test, meta.data_seed)?;
    let train = RealData::open(&meta.data, Part::Train, meta.data_seed)?;
    let test_pool = positions(&test, options.class_filter)?;
    let train_pool = positions(&train, options.class_filter)?;

    // Statistics of the whole test part (of the class): the shipped ones when they apply.
    let shipped = match options.class_filter {
        None => classifier.test_stats()?,
        Some(_) => None,
    };
    let test_stats = match shipped {
        Some(s) => s,
        None => {
            let (x, _) = test.load(&test_pool)?;
            FeatureStats::from_features(&extract_features(net, &x, batch, device)?.features)?
        }
    };

    let ref_pick = pick(&test_pool, n, options.seed, 1);
    let (ref_x, ref_y) = test.load(&ref_pick)?;
    let reference = extract_features(net, &ref_x, batch, device)?;
    let (floor_x, _) = train.load(&pick(&train_pool, n, options.seed, 2))?;
    let floor = extract_features(net, &floor_x, batch, device)?;
    let generated = extract_features(net, samples, batch, device)?;

    let kid_options = KidOptions {
        seed: options.seed,
        ..options.kid
    };
    let mut out = Evaluation::default();
    let gen_stats = FeatureStats::from_features(&generated.features)?;
    let floor_stats = FeatureStats::from_features(&floor.features)?;
    out.metrics
        .insert("cfid".into(), frechet_distance(&gen_stats, &test_stats)?);
    out.floor
        .insert("cfid".into(), frechet_distance(&floor_stats, &test_stats)?);
    let kid_gen = kid(&generated.features, &reference.features, kid_options)?;
    let kid_floor = kid(&floor.features, &reference.features, kid_options)?;
    out.metrics.insert("kid".into(), kid_gen.mean);
    out.floor.insert("kid".into(), kid_floor.mean);
    let pr_gen = precision_recall(&reference.features, &generated.features, options.k)?;
    let pr_floor = precision_recall(&reference.features, &floor.features, options.k)?;
    out.metrics.insert("precision".into(), pr_gen.precision);
    out.metrics.insert("recall".into(), pr_gen.recall);
    out.floor.insert("precision".into(), pr_floor.precision);
    out.floor.insert("recall".into(), pr_floor.recall);

    let mut details = json!({
        "kid_std": kid_gen.std,
        "floor_kid_std": kid_floor.std,
        "kid_subsets": kid_options.subsets,
        "kid_subset_size": kid_options.subset_size.min(n).min(ref_pick.len()),
        "precision_recall_k": options.k,
        "real_reference_images": ref_pick.len(),
        "floor_train_images": floor.features.size()[0],
        "test_stats_images": test_stats.count,
        "class_filter": options.class_filter,
        "class_histogram": class_histogram(&generated.predictions, meta.spec.num_classes)?,
        "floor_class_histogram": class_histogram(&floor.predictions, meta.spec.num_classes)?,
    });
    if let Some(requested) = requested {
        let hits = generated.predictions.eq_tensor(requested);
        out.metrics.insert("class_accuracy".into(), mean(&hits));
        if let Some(ref_y) = &ref_y {
            out.floor.insert(
                "class_accuracy".into(),
                mean(&reference.predictions.eq_tensor(ref_y)),
            );
        }
        let classes: Vec<i64> = Vec::try_from(&requested.unique_dim(0, true, false, false).0)
            .map_err(EvalError::Torch)?;
        let per_class: BTreeMap<String, f64> = classes
            .iter()
            .map(|&k| {
                let mask = requested.eq(k);
                (k.to_string(), mean(&hits.masked_select(&mask)))
            })
            .collect();
        details["per_class_accuracy"] = json!(per_class);
        if let Some(names) = &meta.class_names {
            details["class_names"] = json!(names);
        }
    }
    out.details = details;
    Ok(out)
}

/// How many of `predictions` (int64 class indices) fall in each of `classes` classes.
fn class_histogram(predictions: &Tensor, classes: i64) -> Result<Vec<i64>, EvalError> {
    let counts = predictions
        .to_kind(Kind::Int64)
        .bincount(None::<Tensor>, classes);
    Vec::<i64>::try_from(&counts).map_err(EvalError::Torch)
}

fn mean(bools: &Tensor) -> f64 {
    bools
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// The base seed of fresh true toy samples for evaluation, far from training seeds (the
/// training points use the experiment seed plus `seed_offset`).
pub const TOY_EVAL_SEED: u64 = 0x00e7_a100_0000;

/// Evaluate 2-D toy samples `[N, 2]` of dataset `kind` with spread `noise` against N fresh true
/// points (seed [`TOY_EVAL_SEED`] + 2·seed); the floor uses a second fresh sample
/// (seed + 2·seed + 1).
pub fn evaluate_toy(
    kind: Toy2dKind,
    noise: f32,
    samples: &Tensor,
    seed: u64,
) -> Result<Evaluation, EvalError> {
    let s = samples.size();
    if s.len() != 2 || s[1] != 2 || s[0] < 2 {
        return Err(EvalError::Input(format!(
            "toy samples must be [N, 2] with N >= 2, got {s:?}"
        )));
    }
    let n = s[0] as usize;
    let fresh = |offset: u64| {
        let points = sample_toy2d_with_noise(kind, n, TOY_EVAL_SEED + 2 * seed + offset, noise);
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        (points, Tensor::from_slice(&flat).view([n as i64, 2]))
    };
    let (_, reference) = fresh(0);
    let (floor_points, floor) = fresh(1);
    let samples = samples.to_device(Device::Cpu).to_kind(Kind::Float);
    let sample_points: Vec<[f32; 2]> = Vec::<Vec<f32>>::try_from(&samples)
        .map_err(EvalError::Torch)?
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect();
    let mut out = Evaluation::default();
    out.metrics.insert(
        "mmd_rbf".into(),
        mmd_rbf(&samples, &reference, &TOY_BANDWIDTHS)?,
    );
    out.floor.insert(
        "mmd_rbf".into(),
        mmd_rbf(&floor, &reference, &TOY_BANDWIDTHS)?,
    );
    out.metrics.insert(
        "energy_distance".into(),
        energy_distance(&samples, &reference)?,
    );
    out.floor.insert(
        "energy_distance".into(),
        energy_distance(&floor, &reference)?,
    );
    let cov = mode_coverage(kind, noise, &sample_points);
    let floor_cov = mode_coverage(kind, noise, &floor_points);
    out.metrics.insert("mode_coverage".into(), cov.coverage);
    out.floor.insert("mode_coverage".into(), floor_cov.coverage);
    out.details = json!({
        "dataset": kind.name(),
        "noise": noise,
        "mmd_bandwidths": TOY_BANDWIDTHS,
        "reference_seed": TOY_EVAL_SEED + 2 * seed,
        "modes": cov,
        "floor_modes": floor_cov,
    });
    Ok(out)
}
