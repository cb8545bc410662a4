//! Expanding a sweep into points: grid × explicit points, with `set` under each; naming each
//! point from its overrides; validating every point against the base config; and the exact
//! `difflab train` arguments of a point.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::SweepError;
use super::eval::{EvalJob, EvalSetting, eval_jobs};
use super::spec::{KeyMap, Sweep, SweepSpec};
use difflab_pipeline::config::{ExperimentConfig, Override, load_config};

/// Longest point name; longer ones are cut and end in a hash of the full name.
const MAX_NAME: usize = 100;

/// One point of a sweep: the values it varies and the config they give.
#[derive(Clone, Debug)]
pub struct Point {
    /// Position in the plan (`--point K`, Slurm's array index).
    pub index: usize,
    /// Directory name under `OUT/runs/`, derived from `values`.
    pub name: String,
    /// The varied keys and their values (grid keys first, in file order).
    pub values: Vec<(String, Value)>,
    /// Everything passed to `difflab train` as `--set`: the sweep's `set`, then `values`.
    pub overrides: Vec<Override>,
    /// The base config with `overrides` applied (validated).
    pub config: ExperimentConfig,
}

impl Point {
    /// The value of a varied key, if this point sets it.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// The expanded sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The sweep file, its contents and resolved paths.
    pub sweep: Sweep,
    /// Every key some point varies, in order of first appearance (the table's columns).
    pub keys: Vec<String>,
    /// The points, grid first (last key fastest), then explicit points.
    pub points: Vec<Point>,
    /// The evaluations run on every point (empty without `evaluate:`).
    pub evals: Vec<EvalJob>,
}

/// How `difflab train` is started for a point, from what its run directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainMode {
    /// A fresh run directory.
    Fresh,
    /// Continue from the latest checkpoint (`--resume`).
    Resume,
    /// A run directory with a config but no checkpoint (a run that died before its first
    /// checkpoint): start over (`--overwrite`).
    Overwrite,
}

/// A value as `--set` text: plain YAML scalars stay plain (`cosine`, `20`), anything that
/// would not read back as itself is written as JSON, which is also YAML (`"1"`, `[8,16]`).
pub fn value_text(value: &Value) -> String {
    if let Value::String(s) = value
        && serde_saphyr::from_str::<Value>(s).ok().as_ref() == Some(value)
        && !s.contains('\n')
    {
        return s.clone();
    }
    serde_json::to_string(value).expect("JSON values serialise")
}

/// Cartesian product of the grid (the last key varies fastest), then the explicit points.
/// Each entry lists the point's varied keys and values, grid keys first.
pub fn expand(spec: &SweepSpec) -> Vec<Vec<(String, Value)>> {
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (key, values) in &spec.grid.0 {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    if spec.grid.is_empty() {
        combos.clear();
    }
    combos.extend(spec.points.iter().map(|p| p.0.clone()));
    if combos.is_empty() {
        // Neither grid nor points: the base config (with `set`) is the one point.
        combos.push(Vec::new());
    }
    combos
}

/// The short form of each key used in names: its last segment, unless two keys end in the
/// same segment (`schedule.kind`, `model.kind`), then the whole path with `.` → `-`.
pub fn short_keys(keys: &[String]) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|k| {
            let mine = last(k);
            let clash = keys.iter().filter(|o| last(o) == mine).count() > 1;
            if clash { k.replace('.', "-") } else { mine }
        })
        .collect()
}

/// A value as a file-name fragment: `cosine`, `0.5`, `[8, 16]` → `8-16`.
fn value_slug(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_') {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').trim_start_matches('.');
    if slug.is_empty() {
        "x".into()
    } else {
        slug.to_string()
    }
}

/// The point's directory name: `short-value` pairs joined by `_` in key order
/// (`schedule.kind=cosine, objective=v` → `kind-cosine_objective-v`); `base` for no values.
pub fn point_name(values: &[(String, Value)], keys: &[String], short: &[String]) -> String {
    if values.is_empty() {
        return "base".into();
    }
    let mut parts = Vec::new();
    for (key, short) in keys.iter().zip(short) {
        if let Some((_, v)) = values.iter().find(|(k, _)| k == key) {
            parts.push(format!("{short}-{}", value_slug(v)));
        }
    }
    let name = parts.join("_");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash: String = Sha256::digest(name.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut cut = MAX_NAME - 9;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &name[..cut])
}

fn to_overrides(set: &KeyMap<Value>, values: &[(String, Value)]) -> Result<Vec<Override>, String> {
    set.0
        .iter()
        .chain(values.iter())
        .map(|(k, v)| {
            format!("{k}={}", value_text(v))
                .parse::<Override>()
                .map_err(|e| e.to_string())
        })
        .collect()
}

impl Plan {
    /// Expand the sweep, name its points and load the base config with each point's overrides:
    /// a bad key or value fails here, naming the point, before anything runs.
    pub fn build(sweep: &Sweep) -> Result<Self, SweepError> {
        let spec = &sweep.spec;
        let combos = expand(spec);
        let mut keys: Vec<String> = Vec::new();
        for combo in &combos {
            for (k, _) in combo {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        let short = short_keys(&keys);
        let mut points: Vec<Point> = Vec::new();
        for (index, values) in combos.into_iter().enumerate() {
            let name = point_name(&values, &keys, &short);
            let point_err = |message: String| SweepError::Point {
                path: sweep.file.clone(),
                index,
                name: name.clone(),
                message,
            };
            if let Some(other) = points.iter().find(|p| p.name == name) {
                return Err(point_err(format!(
                    "has the same name as point {} (the same overrides, or values that only differ in punctuation)",
                    other.index
                )));
            }
            let overrides = to_overrides(&spec.set, &values).map_err(point_err)?;
            let config =
                load_config(&sweep.base, &overrides).map_err(|e| point_err(e.to_string()))?;
            // Each evaluation's sampler, as `difflab eval` will set it up on this point's run.
            for s in spec.evaluate.iter().flat_map(|e| &e.samplers) {
                for steps in s.steps.values() {
                    let setting = EvalSetting {
                        sampler: s.sampler,
                        steps,
                        eta: s.eta,
                    };
                    config
                        .sampler
                        .apply(&setting.keys())
                        .map_err(|e| e.to_string())
                        .and_then(|sampler| config.check_sampler(&sampler))
                        .map_err(|e| point_err(format!("evaluate {}: {e}", setting.tag())))?;
                }
            }
            points.push(Point {
                index,
                name,
                values,
                overrides,
                config,
            });
        }
        let evals = spec.evaluate.as_ref().map(eval_jobs).unwrap_or_default();
        Ok(Self {
            sweep: sweep.clone(),
            keys,
            points,
            evals,
        })
    }

    /// `OUT/runs/<name>`: the point's run directory.
    pub fn run_dir(&self, point: &Point) -> PathBuf {
        self.sweep.out.join("runs").join(&point.name)
    }

    /// The arguments after the executable for training `point` (global flags such as
    /// `--threads` go before them).
    pub fn train_args(&self, point: &Point, mode: TrainMode) -> Vec<String> {
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            self.sweep.base.display().to_string(),
        ];
        for o in &point.overrides {
            args.push("--set".into());
            args.push(o.text.clone());
        }
        args.push("--out".into());
        args.push(self.run_dir(point).display().to_string());
        match mode {
            TrainMode::Fresh => {}
            TrainMode::Resume => args.push("--resume".into()),
            TrainMode::Overwrite => args.push("--overwrite".into()),
        }
        args
    }

    /// The expanded plan as JSON (`OUT/sweep.json`).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.sweep.spec.name,
            "sweep_file": self.sweep.file.display().to_string(),
            "base": self.sweep.base.display().to_string(),
            "out": self.sweep.out.display().to_string(),
            "keys": self.keys,
            "points": self.points.iter().map(|p| json!({
                "index": p.index,
                "name": p.name,
                "values": p.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
                "overrides": p.overrides.iter().map(|o| o.text.clone()).collect::<Vec<_>>(),
                "run_dir": self.run_dir(p).display().to_string(),
            })).collect::<Vec<_>>(),
            "evaluations": self.evals.iter().map(|e| json!({
                "tag": e.tag(),
                "sampler": e.setting.sampler,
                "steps": e.setting.steps,
                "eta": e.setting.eta,
                "seed": e.seed,
                "samples": e.samples,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Quote an argument for a POSIX shell when it needs it.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A command line for a POSIX shell.
pub fn shell_join(program: &Path, args: &[String]) -> String {
    std::iter::once(shell_quote(&program.display().to_string()))
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::spec::parse_sweep;
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        parse_sweep(text, Path::new("s.yaml"), None).unwrap().spec
    }

    fn names(combos: &[Vec<(String, Value)>]) -> Vec<String> {
        combos
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={}", value_text(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn grid_is_cartesian_with_the_last_key_fastest_then_points() {
        let s = spec(
            "name: s\nbase: b.yaml\nset: {training.steps: 5}\n\
             grid: {schedule.kind: [linear, cosine], objective: [eps, v]}\n\
             points: [{schedule.kind: sigmoid, objective: v}, {seed: 3}]\n",
        );
        assert_eq!(
            names(&expand(&s)),
            [
                "schedule.kind=linear,objective=eps",
                "schedule.kind=linear,objective=v",
                "schedule.kind=cosine,objective=eps",
                "schedule.kind=cosine,objective=v",
                "schedule.kind=sigmoid,objective=v",
                "seed=3",
            ]
        );
        assert_eq!(names(&expand(&spec("name: s\nbase: b.yaml\n"))), [""]);
        assert_eq!(
            names(&expand(&spec(
                "name: s\nbase: b.yaml\npoints: [{seed: 1}]\n"
            ))),
            ["seed=1"]
        );
    }

    #[test]
    fn names_use_the_last_key_segment_unless_ambiguous() {
        let keys: Vec<String> = ["schedule.kind", "objective"].map(String::from).to_vec();
        let short = short_keys(&keys);
        let v = vec![
            ("schedule.kind".to_string(), json!("cosine")),
            ("objective".to_string(), json!("v")),
        ];
        assert_eq!(point_name(&v, &keys, &short), "kind-cosine_objective-v");
        let keys: Vec<String> = [
            "schedule.kind",
            "process.degradation.kind",
            "model.block_out_channels",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            short_keys(&keys),
            [
                "schedule-kind",
                "process-degradation-kind",
                "block_out_channels"
            ]
        );
        let short = short_keys(&keys);
        let v = vec![("model.block_out_channels".to_string(), json!([8, 16]))];
        assert_eq!(point_name(&v, &keys, &short), "block_out_channels-8-16");
        let v = vec![(
            "schedule.kind".to_string(),
            json!({"kind": "blur", "sigma": 0.5}),
        )];
        assert_eq!(
            point_name(&v, &keys, &short),
            "schedule-kind-kind-blur-sigma-0.5"
        );
        assert_eq!(point_name(&[], &keys, &short), "base");
        let long = vec![("schedule.kind".to_string(), json!("x".repeat(300)))];
        let name = point_name(&long, &keys, &short);
        assert_eq!(name.len(), MAX_NAME);
        assert_eq!(name, point_name(&long, &keys, &short), "deterministic");
    }

    #[test]
    fn set_values_read_back_as_themselves() {
        for v in [
            json!("cosine"),
            json!(20),
            json!(0.5),
            json!("1"),
            json!("true"),
            json!([8, 16]),
            json!({"kind": "blur", "steps": 40}),
            json!(null),
            json!("a: b"),
        ] {
            let text = format!("k={}", value_text(&v));
            let o: Override = text.parse().unwrap();
            assert_eq!(o.value, v, "{text}");
        }
        assert_eq!(value_text(&json!("cosine")), "cosine");
        assert_eq!(value_text(&json!("1")), "\"1\"");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("schedule.kind=cosine"), "schedule.kind=cosine");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("[8,16]"), "'[8,16]'");
    }

    #[test]
    fn a_bad_key_fails_the_plan_naming_the_point() {
        let dir = std::env::temp_dir().join(format!("difflab-sweep-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/toy2d.yaml"),
            dir.join("toy2d.yaml"),
        )
        .unwrap();
        let text = "name: s\nbase: toy2d.yaml\ngrid: {objective: [eps, v]}\npoints: [{schedule.kindd: cosine}]\n";
        let file = dir.join("s.yaml");
        let sweep = parse_sweep(text, &file, Some(&dir.join("out"))).unwrap();
        let err = Plan::build(&sweep).unwrap_err().to_string();
        assert!(
            err.contains("point 2") && err.contains("kindd-cosine") && err.contains("kindd"),
            "{err}"
        );
        assert!(err.contains("s.yaml"), "{err}");

        let text =
            "name: s\nbase: toy2d.yaml\nset: {training.steps: 7}\ngrid: {objective: [eps, v]}\n";
        let sweep = parse_sweep(text, &file, Some(&dir.join("out"))).unwrap();
        let plan = Plan::build(&sweep).unwrap();
        assert_eq!(plan.points.len(), 2);
        assert_eq!(plan.points[1].config.training.steps, 7);
        assert_eq!(
            plan.train_args(&plan.points[1], TrainMode::Resume)[3..],
            [
                "--set".to_string(),
                "training.steps=7".into(),
                "--set".into(),
                "objective=v".into(),
                "--out".into(),
                dir.join("out/runs/objective-v").display().to_string(),
                "--resume".into()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
