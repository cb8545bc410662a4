//! The evaluations of a point: one `difflab eval` run per sampler setting × seed, each writing
//! `RUNDIR/eval/<tag>/eval.json` shaped `{"metrics": {name: number}, "floor": {name: number}}`.
//!
//! This module only builds the command's arguments and reads its output; the sweep command
//! starts the process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use difflab_samplers::{SamplerKeys, SamplerKind};
use serde_json::Value;

use super::spec::EvaluateSpec;

/// One sampler setting.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSetting {
    /// The sampler.
    pub sampler: SamplerKind,
    /// Sampling steps.
    pub steps: u64,
    /// DDIM η, when the sweep sets it.
    pub eta: Option<f64>,
}

impl EvalSetting {
    /// `ddim-20`, or `ddim-20-eta0.5` when η is set.
    pub fn tag(&self) -> String {
        match self.eta {
            Some(eta) => format!("{}-{}-eta{eta}", self.sampler, self.steps),
            None => format!("{}-{}", self.sampler, self.steps),
        }
    }

    /// The sampler keys `difflab eval` gets (`--sampler`, `--steps`, `--eta`).
    pub fn keys(&self) -> SamplerKeys {
        SamplerKeys {
            kind: Some(self.sampler),
            steps: Some(self.steps as usize),
            eta: self.eta,
            ..SamplerKeys::default()
        }
    }
}

/// One evaluation of one point: a setting, a seed and a sample count.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalJob {
    /// The sampler setting.
    pub setting: EvalSetting,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// Samples to generate.
    pub samples: u64,
}

/// What one evaluation measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Metric values (e.g. `fid`, `kid`).
    pub metrics: BTreeMap<String, f64>,
    /// The real-vs-real floor of each metric, when reported.
    pub floor: BTreeMap<String, f64>,
}

/// Every evaluation of the `evaluate:` section: samplers in order, their step counts in
/// order, every seed.
pub fn eval_jobs(spec: &EvaluateSpec) -> Vec<EvalJob> {
    let mut jobs = Vec::new();
    for s in &spec.samplers {
        for steps in s.steps.values() {
            for &seed in &spec.seeds {
                jobs.push(EvalJob {
                    setting: EvalSetting {
                        sampler: s.sampler,
                        steps,
                        eta: s.eta,
                    },
                    seed,
                    samples: spec.samples,
                });
            }
        }
    }
    jobs
}

impl EvalJob {
    /// `ddim-20-eta0-seed1`: the directory name under `RUNDIR/eval/`.
    pub fn tag(&self) -> String {
        format!("{}-seed{}", self.setting.tag(), self.seed)
    }

    /// `RUNDIR/eval/<tag>`.
    pub fn out_dir(&self, run_dir: &Path) -> PathBuf {
        run_dir.join("eval").join(self.tag())
    }

    /// `RUNDIR/eval/<tag>/eval.json`: present once the evaluation finished.
    pub fn result_file(&self, run_dir: &Path) -> PathBuf {
        self.out_dir(run_dir).join("eval.json")
    }

    /// The arguments after the executable:
    /// `eval --run RUNDIR --sampler S --steps K [--eta E] -n SAMPLES --seed SEED --out DIR --json`.
    pub fn args(&self, run_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "eval".to_string(),
            "--run".into(),
            run_dir.display().to_string(),
            "--sampler".into(),
            self.setting.sampler.name().to_string(),
            "--steps".into(),
            self.setting.steps.to_string(),
        ];
        if let Some(eta) = self.setting.eta {
            args.push("--eta".into());
            args.push(eta.to_string());
        }
        args.extend([
            "-n".into(),
            self.samples.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--out".into(),
            self.out_dir(run_dir).display().to_string(),
            "--json".into(),
        ]);
        args
    }
}

/// Parse `eval.json` text: `metrics` is required (numbers; others are ignored), `floor` optional.
pub fn parse_eval_json(text: &str) -> Result<EvalResult, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let numbers = |key: &str| -> Result<BTreeMap<String, f64>, String> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => Ok(map
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect()),
            Some(other) => Err(format!("`{key}` is {other}, not an object of numbers")),
        }
    };
    if value.get("metrics").is_none() {
        return Err("no `metrics` object".into());
    }
    Ok(EvalResult {
        metrics: numbers("metrics")?,
        floor: numbers("floor")?,
    })
}

/// Read `eval.json`; `None` when it does not exist yet, an error when it is unreadable.
pub fn read_eval_json(path: &Path) -> Result<Option<EvalResult>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_eval_json(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{SamplerSpec, StepsSpec};
    use super::*;

    fn spec() -> EvaluateSpec {
        EvaluateSpec {
            samples: 500,
            seeds: vec![0, 1],
            samplers: vec![
                SamplerSpec {
                    sampler: SamplerKind::Ddpm,
                    steps: StepsSpec::One(1000),
                    eta: None,
                },
                SamplerSpec {
                    sampler: SamplerKind::Ddim,
                    steps: StepsSpec::Many(vec![10, 20]),
                    eta: Some(0.0),
                },
            ],
        }
    }

    #[test]
    fn jobs_are_samplers_then_steps_then_seeds() {
        let tags: Vec<String> = eval_jobs(&spec()).iter().map(EvalJob::tag).collect();
        assert_eq!(
            tags,
            [
                "ddpm-1000-seed0",
                "ddpm-1000-seed1",
                "ddim-10-eta0-seed0",
                "ddim-10-eta0-seed1",
                "ddim-20-eta0-seed0",
                "ddim-20-eta0-seed1"
            ]
        );
    }

    #[test]
    fn builds_the_eval_command_of_the_contract() {
        let jobs = eval_jobs(&spec());
        let run = Path::new("out/runs/p");
        assert_eq!(
            jobs[3].args(run).join(" "),
            "eval --run out/runs/p --sampler ddim --steps 10 --eta 0 -n 500 --seed 1 --out out/runs/p/eval/ddim-10-eta0-seed1 --json"
        );
        assert_eq!(
            jobs[0].args(run).join(" "),
            "eval --run out/runs/p --sampler ddpm --steps 1000 -n 500 --seed 0 --out out/runs/p/eval/ddpm-1000-seed0 --json"
        );
        assert_eq!(
            jobs[0].result_file(run),
            Path::new("out/runs/p/eval/ddpm-1000-seed0/eval.json")
        );
    }

    #[test]
    fn reads_eval_json() {
        let dir = std::env::temp_dir().join(format!("difflab-sweep-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eval.json");
        assert_eq!(read_eval_json(&path).unwrap(), None);
        std::fs::write(
            &path,
            r#"{"metrics": {"fid": 12.5, "kid": 0.01, "note": "x"}, "floor": {"fid": 1.5}, "samples": 500}"#,
        )
        .unwrap();
        let r = read_eval_json(&path).unwrap().unwrap();
        assert_eq!(r.metrics.len(), 2);
        assert_eq!(r.metrics["fid"], 12.5);
        assert_eq!(r.floor["fid"], 1.5);
        std::fs::write(&path, r#"{"floor": {}}"#).unwrap();
        assert!(read_eval_json(&path).unwrap_err().contains("metrics"));
        std::fs::write(&path, "not json").unwrap();
        assert!(read_eval_json(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
