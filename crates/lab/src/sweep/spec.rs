//! The sweep file: a base config, overrides for every point, a cartesian grid and/or explicit
//! points, and the evaluation to run on each point. See `docs/sweeps.md`.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use difflab_samplers::{SamplerKeys, SamplerKind};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SweepError;

/// A YAML mapping that keeps its keys in file order (grid columns and point names follow it).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyMap<V>(pub Vec<(String, V)>);

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> KeyMap<V> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for KeyMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyMapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for KeyMapVisitor<V> {
            type Value = KeyMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of dotted config keys (e.g. schedule.kind) to values")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    let path_ok = !key.is_empty() && key.split('.').all(|s| !s.is_empty());
                    if !path_ok {
                        return Err(serde::de::Error::custom(format!(
                            "`{key}` is not a dotted config key like schedule.kind"
                        )));
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(KeyMap(entries))
            }
        }
        deserializer.deserialize_map(KeyMapVisitor(PhantomData))
    }
}

impl<V: Serialize> Serialize for KeyMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One sweep file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Sweep name (letters, digits, `-`, `_`, `.`); the default output is `runs/sweeps/<name>`.
    pub name: String,
    /// The base experiment config, relative to the sweep file.
    pub base: PathBuf,
    /// Output directory, relative to the working directory (like `difflab train`'s `runs/`).
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Overrides applied to every point, before the point's own.
    #[serde(default)]
    pub set: KeyMap<Value>,
    /// Cartesian grid: every combination of the listed values (the last key varies fastest).
    #[serde(default)]
    pub grid: KeyMap<Vec<Value>>,
    /// Explicit points run after the grid's.
    #[serde(default)]
    pub points: Vec<KeyMap<Value>>,
    /// What to evaluate on each trained point; omitted: training metrics only.
    #[serde(default)]
    pub evaluate: Option<EvaluateSpec>,
}

/// The `evaluate:` section: every sampler setting × every seed, on each point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// Samples generated per evaluation.
    pub samples: u64,
    /// Evaluation seeds (default `[0]`); tables report mean ± std over them.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Sampler settings.
    pub samplers: Vec<SamplerSpec>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One sampler with one or several step counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// The sampler, as `difflab eval --sampler` takes it (ddpm, ddim, cold).
    pub sampler: SamplerKind,
    /// Sampling steps: one number or a list.
    pub steps: StepsSpec,
    /// DDIM η (omitted: the run's, or the default); ddim only.
    #[serde(default)]
    pub eta: Option<f64>,
}

/// `steps: 50` or `steps: [10, 20, 50]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepsSpec {
    /// One step count.
    One(u64),
    /// Several step counts, evaluated in order.
    Many(Vec<u64>),
}

impl StepsSpec {
    /// The step counts in order.
    pub fn values(&self) -> Vec<u64> {
        match self {
            Self::One(s) => vec![*s],
            Self::Many(v) => v.clone(),
        }
    }
}

/// A sweep file read from disk, with its paths resolved.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The sweep file.
    pub file: PathBuf,
    /// The file's contents.
    pub spec: SweepSpec,
    /// The base config (`base` resolved against the sweep file's directory).
    pub base: PathBuf,
    /// The output directory.
    pub out: PathBuf,
}

/// True for names usable as one path component everywhere.
pub(crate) fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// Parse sweep-file text (named `path` in errors); relative paths resolve against `path`'s
/// directory, `out` (when given, e.g. from `--out`) replaces the file's `out`.
pub fn parse_sweep(text: &str, path: &Path, out: Option<&Path>) -> Result<Sweep, SweepError> {
    let spec: SweepSpec = serde_saphyr::from_str(text).map_err(|e| SweepError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| SweepError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if !is_safe_name(&spec.name) {
        return Err(invalid(format!(
            "name: {:?} must be letters, digits, '-', '_', '.' or '+'",
            spec.name
        )));
    }
    for (key, values) in &spec.grid.0 {
        if values.is_empty() {
            return Err(invalid(format!("grid.{key}: needs at least one value")));
        }
    }
    if let Some(eval) = &spec.evaluate {
        if eval.samples == 0 {
            return Err(invalid("evaluate.samples: must be >= 1".into()));
        }
        if eval.seeds.is_empty() {
            return Err(invalid("evaluate.seeds: needs at least one seed".into()));
        }
        if eval.samplers.is_empty() {
            return Err(invalid(
                "evaluate.samplers: needs at least one sampler".into(),
            ));
        }
        for (i, s) in eval.samplers.iter().enumerate() {
            let keys = SamplerKeys {
                eta: s.eta,
                ..SamplerKeys::default()
            };
            if let Err(e) = keys.check(s.sampler) {
                return Err(invalid(format!(
                    "evaluate.samplers[{i}].{} = {}: does not apply to sampler: {} (it takes {})",
                    e.key,
                    e.value,
                    s.sampler,
                    s.sampler.keys().join(", ")
                )));
            }
            let steps = s.steps.values();
            if steps.is_empty() || steps.contains(&0) {
                return Err(invalid(format!(
                    "evaluate.samplers[{i}].steps: {steps:?} must be step counts >= 1"
                )));
            }
            if let Some(eta) = s.eta
                && !(eta >= 0.0 && eta.is_finite())
            {
                return Err(invalid(format!(
                    "evaluate.samplers[{i}].eta: {eta} must be >= 0"
                )));
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let base = dir.join(&spec.base);
    let out = out
        .map(Path::to_path_buf)
        .or_else(|| spec.out.clone())
        .unwrap_or_else(|| PathBuf::from("runs/sweeps").join(&spec.name));
    Ok(Sweep {
        file: path.to_path_buf(),
        spec,
        base,
        out,
    })
}

/// Read and parse a sweep file (see [`parse_sweep`]).
pub fn load_sweep(path: &Path, out: Option<&Path>) -> Result<Sweep, SweepError> {
    let text = std::fs::read_to_string(path).map_err(|error| SweepError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_sweep(&text, path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
name: s
base: ../toy2d.yaml
set: {training.steps: 5}
grid: {schedule.kind: [linear, cosine], objective: [eps, v]}
points: [{schedule.kind: sigmoid, objective: v}]
evaluate:
  samples: 10
  seeds: [0, 1]
  samplers: [{sampler: ddpm, steps: 1000}, {sampler: ddim, steps: [10, 20], eta: 0}]
";

    #[test]
    fn parses_keys_in_file_order_and_resolves_paths() {
        let sweep = parse_sweep(FILE, Path::new("configs/sweeps/s.yaml"), None).unwrap();
        let keys: Vec<&str> = sweep.spec.grid.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["schedule.kind", "objective"]);
        assert_eq!(sweep.base, Path::new("configs/sweeps/../toy2d.yaml"));
        assert_eq!(sweep.out, Path::new("runs/sweeps/s"));
        let eval = sweep.spec.evaluate.unwrap();
        assert_eq!(eval.samplers[0].steps.values(), [1000]);
        assert_eq!(eval.samplers[1].steps.values(), [10, 20]);
        let out = parse_sweep(FILE, Path::new("s.yaml"), Some(Path::new("/tmp/x"))).unwrap();
        assert_eq!(out.out, Path::new("/tmp/x"));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let err = parse_sweep(
            "name: s\nbase: b.yaml\ngrd: {}\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.yaml") && err.contains("grd"), "{err}");
        let err = parse_sweep(
            "name: s\nbase: b.yaml\ngrid: {objective: []}\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("f.yaml") && err.contains("grid.objective"),
            "{err}"
        );
        let err = parse_sweep(
            "name: s\nbase: b.yaml\nevaluate: {samples: 1, samplers: [{sampler: ddim, steps: 0}]}\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("evaluate.samplers[0].steps"), "{err}");
        // η is a DDIM key: an error for ddpm, naming it.
        let err = parse_sweep(
            "name: s\nbase: b.yaml\nevaluate: {samples: 1, samplers: [{sampler: ddim, steps: 2}, {sampler: ddpm, steps: 10, eta: 1}]}\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("evaluate.samplers[1].eta = 1") && err.contains("sampler: ddpm"),
            "{err}"
        );
        // Not a sampler: the parse error names it, with its line.
        let err = parse_sweep(
            "name: s\nbase: b.yaml\nevaluate:\n  samples: 1\n  samplers: [{sampler: euler, steps: 2}]\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("euler") && err.contains('5'), "{err}");
        let err = parse_sweep(
            "name: s\nbase: b.yaml\ngrid: {a: [1], a: [2]}\n",
            Path::new("f.yaml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.yaml"), "{err}");
        let err = parse_sweep("name: a/b\nbase: b.yaml\n", Path::new("f.yaml"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("name"), "{err}");
    }
}
