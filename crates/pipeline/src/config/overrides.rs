//! `--set key.path=value` overrides, applied to the parsed config tree.

use serde_json::Value;

use super::ConfigError;

/// One parsed `--set key.path=value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Dotted key path, e.g. `schedule.kind`.
    pub path: Vec<String>,
    /// The value, parsed as YAML (`20` is a number, `[500, 1000]` a list, `cosine` a string).
    pub value: Value,
    /// The argument as written, for error messages.
    pub text: String,
}

impl std::str::FromStr for Override {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::Override {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let (path, raw) = text
            .split_once('=')
            .ok_or_else(|| bad("expected key.path=value"))?;
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(bad("empty key in the path"));
        }
        let value = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str::<Value>(raw)
                .map_err(|e| bad(&format!("value is not valid YAML: {e}")))?
        };
        Ok(Self {
            path,
            value,
            text: text.to_string(),
        })
    }
}

/// Set `o.path` in `tree` to `o.value`, creating missing mappings on the way. Fails when the
/// path runs through a value that is not a mapping.
pub fn apply_override(tree: &mut Value, o: &Override) -> Result<(), ConfigError> {
    let mut node = tree;
    for (i, key) in o.path.iter().enumerate() {
        let map = match node {
            Value::Object(map) => map,
            Value::Null => {
                *node = Value::Object(Default::default());
                node.as_object_mut().expect("just made a map")
            }
            other => {
                return Err(ConfigError::Override {
                    text: o.text.clone(),
                    reason: format!("`{}` is {other}, not a mapping", o.path[..i].join(".")),
                });
            }
        };
        if i + 1 == o.path.len() {
            map.insert(key.clone(), o.value.clone());
            return Ok(());
        }
        node = map.entry(key.clone()).or_insert(Value::Null);
    }
    unreachable!("paths are non-empty")
}
