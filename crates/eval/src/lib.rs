//! Sample-quality metrics for difflab and the reference feature network they are measured in.
//!
//! No package ships Inception weights, so standard FID cannot be computed offline. difflab
//! instead measures samples in the feature space of a small LeNet-style classifier it trains
//! itself ([`classifier`], [`reference`](mod@reference)): "classifier-FID" ([`frechet`]), KID ([`kid`](mod@kid)) and
//! k-NN precision/recall ([`precision_recall`](mod@precision_recall)), always beside the real-train-vs-real-test
//! *floor* ([`suite`]). The 2-D toy gets distribution distances against fresh true samples
//! ([`toy`]). `docs/evaluation.md` explains every number.
//!
//! One file per concept: the metric formulas know nothing about networks or datasets; the
//! [`suite`] composes them.
#![forbid(unsafe_code)]

pub mod classifier;
mod error;
pub mod features;
pub mod frechet;
pub mod job;
pub mod kid;
pub mod precision_recall;
pub mod real_data;
pub mod reference;
pub mod report;
pub mod samples;
pub mod suite;
pub mod toy;

pub use classifier::{ClassifierSpec, LeNet};
pub use error::EvalError;
pub use features::{Extracted, extract_features, prepare_images};
pub use frechet::{FeatureStats, frechet_distance, sqrtm_psd};
pub use kid::{KidOptions, KidResult, kid};
pub use precision_recall::{PrecisionRecall, precision_recall};
pub use real_data::{Part, RealData};
pub use reference::{
    REFERENCE_STEM, REFERENCE_WEIGHTS, ReferenceClassifier, ReferenceMeta, TrainOptions,
    reference_paths, save_classifier, sha256_file, train_classifier,
};
pub use report::{EvalReport, format_table};
pub use samples::{read_image_folder, read_samples_csv};
pub use suite::{Evaluation, ImageEvalOptions, evaluate_images, evaluate_toy};
pub use toy::{ModeCoverage, energy_distance, mmd_rbf, mode_coverage};

/// Standard-normal f64 draws from libtorch's global generator seeded with `seed`, holding
/// difflab's generator lock so that code running in parallel threads (other tests, the
/// reference classifier's initialisation) cannot reseed it between the seeding and the draw
/// (which made them see other tests' numbers).
#[cfg(test)]
pub(crate) fn seeded_randn(shape: &[i64], seed: i64) -> tch::Tensor {
    let _rng = difflab_samplers::generator_lock();
    tch::manual_seed(seed);
    tch::Tensor::randn(shape, (tch::Kind::Double, tch::Device::Cpu))
}
