//! Reading a YAML manifest (cascade or ensemble) with errors that name the file, line and key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::SamplingError;

/// Parse the YAML file at `path` into `T` (`deny_unknown_fields` types: unknown keys are
/// errors with line and column).
pub(crate) fn read_manifest<T: DeserializeOwned>(path: &Path) -> Result<T, SamplingError> {
    let text = std::fs::read_to_string(path).map_err(|error| SamplingError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| SamplingError::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The one model reference of a manifest entry: exactly one of `run`, `checkpoint` (and, for
/// cascade stages, `ensemble`) must be set.
pub(crate) fn one_of<'a>(
    what: &str,
    entries: &[(&str, &'a Option<PathBuf>)],
) -> Result<(&'static str, &'a Path), SamplingError> {
    let set: Vec<_> = entries
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|p| (*k, p)))
        .collect();
    let keys = entries
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ");
    match set.as_slice() {
        [(k, p)] => Ok((leak_key(k), p)),
        [] => Err(SamplingError::invalid(format!("{what}: set one of {keys}"))),
        many => Err(SamplingError::invalid(format!(
            "{what}: {} are all set; set only one of {keys}",
            many.iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// Manifest keys are a fixed small set: map back to their static names.
fn leak_key(k: &str) -> &'static str {
    match k {
        "run" => "run",
        "checkpoint" => "checkpoint",
        "ensemble" => "ensemble",
        _ => "model",
    }
}
