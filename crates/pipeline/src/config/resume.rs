//! What may change when a run is resumed: only what does not change what the run computes.

use serde_json::Value;

use super::ExperimentConfig;

/// The keys (and sections) a resumed run may set differently from its checkpoint: the total
/// number of steps, logging, checkpoint and preview cadence and the preview sampler, what to do
/// on a NaN, the name, the device and the data workers.
/// Everything else (data, process, schedule, objective, model, optimizer, EMA, loss, seed, …)
/// would make the resumed run a different experiment.
pub const RESUMABLE_KEYS: &[&str] = &[
    "training.steps",
    "training.checkpoint_every",
    "training.keep_last",
    "training.sample_every",
    "training.preview_images",
    "training.on_nan",
    "logging",
    "sampler",
    "name",
    "device",
    "data.workers",
];

fn resumable(key: &str) -> bool {
    RESUMABLE_KEYS.iter().any(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Every leaf of a JSON tree by its dotted path (arrays are leaves).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = match prefix {
                    "" => k.clone(),
                    p => format!("{p}.{k}"),
                };
                leaves(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// The keys outside [`RESUMABLE_KEYS`] whose value differs between the config a checkpoint
/// was written with (`recorded`, as stored in its `state.json`) and `config`: `(key, recorded
/// value, new value)`, sorted by key; a key missing on one side shows as `null`.
pub fn resume_differences(
    recorded: &Value,
    config: &ExperimentConfig,
) -> Vec<(String, Value, Value)> {
    let now = serde_json::to_value(config).expect("configs serialise");
    let (mut old, mut new) = (Vec::new(), Vec::new());
    leaves("", recorded, &mut old);
    leaves("", &now, &mut new);
    let mut keys: Vec<&String> = old.iter().chain(&new).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let get = |list: &[(String, Value)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map_or(Value::Null, |(_, v)| v.clone())
    };
    keys.into_iter()
        .filter(|k| !resumable(k))
        .filter_map(|k| {
            let (a, b) = (get(&old, k), get(&new, k));
            (a != b).then(|| (k.clone(), a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn config(extra: &str) -> ExperimentConfig {
        let text = format!("name: r\ndata:\n  kind: toy2d\nmodel:\n  kind: mlp\n{extra}");
        parse_config(&text, std::path::Path::new("r.yaml"), &[]).unwrap()
    }

    #[test]
    fn only_settings_that_do_not_change_the_experiment_may_differ() {
        let base = config("training:\n  steps: 100\n");
        let recorded = serde_json::to_value(&base).unwrap();
        // Steps, cadence, logging, device and workers: allowed.
        let fine = config(
            "device: cpu\ntraining:\n  steps: 500\n  checkpoint_every: 7\n  sample_every: 3\nlogging:\n  log_every: 1\n",
        );
        assert!(resume_differences(&recorded, &fine).is_empty());
        // The objective, the learning rate and the schedule: each named, old and new.
        let changed = config(
            "objective: v\ntraining:\n  optimizer:\n    lr: 0.01\nschedule:\n  kind: cosine\n",
        );
        let diff = resume_differences(&recorded, &changed);
        let keys: Vec<&str> = diff.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["objective", "schedule.kind", "training.optimizer.lr"]
        );
        let lr = diff
            .iter()
            .find(|(k, _, _)| k == "training.optimizer.lr")
            .unwrap();
        assert_eq!((lr.1.as_f64(), lr.2.as_f64()), (Some(0.0002), Some(0.01)));
    }
}
