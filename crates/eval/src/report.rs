//! The result of an evaluation: `eval.json` and the printed table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `difflab eval` writes to `eval.json`. The top-level keys are a contract (the sweep
/// runner reads them): `metrics` and `floor` map snake_case metric names (`cfid`, `kid`,
/// `precision`, `recall`, `class_accuracy`, `mmd_rbf`, `energy_distance`, `mode_coverage`) to
/// numbers; `floor` holds the same metric for real data against real data (real train images
/// vs the real test set, or a second fresh toy sample), the value a perfect generator would
/// get at this sample size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Metric name → value for the samples.
    pub metrics: BTreeMap<String, f64>,
    /// Metric name → value for real data (the floor).
    pub floor: BTreeMap<String, f64>,
    /// Number of samples evaluated.
    pub num_samples: usize,
    /// The feature network (path, hash, accuracy) or the toy reference.
    pub feature_network: serde_json::Value,
    /// How the samples were made (sampler, steps, η, seed), when known.
    pub sampler: serde_json::Value,
    /// Where the samples came from (run, checkpoint, folder).
    pub source: serde_json::Value,
    /// Everything else: KID's standard deviation, per-class accuracy, mode counts, sizes.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// A plain-text table `metric | value | floor`, one row per metric, in name order.
pub fn format_table(report: &EvalReport) -> String {
    let mut out = format!("{:<18} {:>12} {:>12}\n", "metric", "value", "floor");
    out += &format!("{}\n", "-".repeat(44));
    for (name, value) in &report.metrics {
        let floor = report
            .floor
            .get(name)
            .map(|f| format!("{f:>12.5}"))
            .unwrap_or_else(|| format!("{:>12}", "-"));
        out += &format!("{name:<18} {value:>12.5} {floor}\n");
    }
    for (label, key) in [
        ("samples per class", "class_histogram"),
        ("floor per class", "floor_class_histogram"),
    ] {
        if let Some(counts) = report.details[key].as_array() {
            let counts: Vec<String> = counts.iter().map(ToString::to_string).collect();
            out += &format!("{label:<18} {}\n", counts.join(" "));
        }
    }
    out += &format!("({} samples)\n", report.num_samples);
    out
}
