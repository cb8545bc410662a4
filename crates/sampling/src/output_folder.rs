//! The output folder of a sampling job: outputs never mix. A job writes into an absent or
//! empty folder; `--overwrite` first removes exactly what a previous job wrote there (the files
//! its `sample.json` lists, nothing else); `--resume` finishes a job that was interrupted,
//! after checking that it is the same job (same model weights, settings, seed and count).
//!
//! While a job runs, `sample.json` says `"status": "running"` and lists the files written so
//! far; images are written as each batch finishes, so an interrupted job keeps what it made.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use crate::SamplingError;

/// The record file of a job, in its output folder.
pub const RECORD_FILE: &str = "sample.json";

/// What to do with an output folder that already holds files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// The folder must be absent or empty.
    #[default]
    Fresh,
    /// Remove what a previous `difflab sample` wrote there (the files its `sample.json`
    /// lists), then sample.
    Overwrite,
    /// Finish the interrupted job whose `sample.json` is there: keep its images, make the rest.
    Resume,
}

/// An output folder being written: the files so far, the job's identity.
#[derive(Debug)]
pub struct OutputFolder {
    root: PathBuf,
    files: BTreeSet<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SamplingError + '_ {
    move |error| SamplingError::invalid(format!("{}: {error}", path.display()))
}

/// A listed file name that stays inside the folder: relative, no `..`, no root.
fn inside(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The previous job's record, if the folder has one.
fn read_record(root: &Path) -> Result<Option<Value>, SamplingError> {
    let path = root.join(RECORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            SamplingError::invalid(format!("{}: not a sample record: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The files a record says its job wrote: its `files` list, or, for records written before
/// jobs listed their files, what such a job wrote (`000000.png`…, `grid.png`, `samples.csv`,
/// `trajectory.png`, each stage's images under `stages/<name>/`).
fn recorded_files(record: &Value) -> Vec<String> {
    if let Some(list) = record["files"].as_array() {
        return list
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
    }
    let n = record["num_images"].as_u64().unwrap_or(0) as usize;
    let per_folder = |prefix: &str| -> Vec<String> {
        (0..n)
            .map(|i| format!("{prefix}{i:06}.png"))
            .chain(["grid.png", "samples.csv"].map(|f| format!("{prefix}{f}")))
            .collect()
    };
    let mut files = per_folder("");
    files.push("trajectory.png".into());
    if let Some(stages) = record["stages"].as_array() {
        for stage in &stages[..stages.len().saturating_sub(1)] {
            if let Some(name) = stage["name"].as_str() {
                files.extend(per_folder(&format!("stages/{name}/")));
            }
        }
    }
    files
}

/// What is in `root` (not following symlinks): the entries' names.
fn entries(root: &Path) -> Result<Vec<String>, SamplingError> {
    match std::fs::read_dir(root) {
        Ok(dir) => dir
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(io(root))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(root)(e)),
    }
}

impl OutputFolder {
    /// Take `root` for the job identified by `identity` (the model weights' hashes, the
    /// settings, the seed, the number of images), as `mode` says. Returns the folder and, with
    /// [`OutputMode::Resume`], how many images (`000000.png`, … of the last stage, written by
    /// the same job) are already there.
    pub fn open(
        root: &Path,
        mode: OutputMode,
        identity: &Value,
        last_stage_dir: &str,
    ) -> Result<(Self, usize), SamplingError> {
        let mut folder = Self {
            root: root.to_path_buf(),
            files: BTreeSet::new(),
        };
        let present = entries(root)?;
        if present.is_empty() {
            if mode == OutputMode::Resume {
                return Err(SamplingError::invalid(format!(
                    "--resume: {} holds no sampling job to finish",
                    root.display()
                )));
            }
            return Ok((folder, 0));
        }
        let record = read_record(root)?;
        match (mode, record) {
            (OutputMode::Fresh, record) => Err(SamplingError::invalid(format!(
                "{} is not empty ({} entries{}); pass --overwrite to replace what a previous difflab sample wrote there, --resume to finish an interrupted job, or another --out",
                root.display(),
                present.len(),
                if record.is_some() {
                    ", a previous job's sample.json among them"
                } else {
                    ""
                }
            ))),
            (_, None) => Err(SamplingError::invalid(format!(
                "{} holds files but no sample.json: it was not written by difflab sample, and nothing in it will be deleted or mixed with new images; use another --out",
                root.display()
            ))),
            (OutputMode::Overwrite, Some(record)) => {
                folder.remove_recorded(&record)?;
                Ok((folder, 0))
            }
            (OutputMode::Resume, Some(record)) => {
                if record["request"] != *identity {
                    return Err(SamplingError::invalid(format!(
                        "--resume: {} holds a different job (its sample.json records other weights, settings, seed or number of images); pass --overwrite to replace it",
                        root.display()
                    )));
                }
                folder.files = recorded_files(&record)
                    .into_iter()
                    .filter(|f| inside(f))
                    .collect();
                let prefix = match last_stage_dir {
                    "" => String::new(),
                    dir => format!("{dir}/"),
                };
                let done = (0..)
                    .take_while(|i| {
                        let name = format!("{prefix}{i:06}.png");
                        folder.files.contains(&name) && root.join(&name).is_file()
                    })
                    .count();
                Ok((folder, done))
            }
        }
    }

    /// Remove the files `record` lists (each checked to stay inside the folder; symlinks are
    /// removed, never followed), then the `stages/` folders they leave empty.
    fn remove_recorded(&self, record: &Value) -> Result<(), SamplingError> {
        for name in recorded_files(record) {
            if !inside(&name) {
                return Err(SamplingError::invalid(format!(
                    "{}: lists {name:?}, which is not a file inside the folder; nothing was removed past it",
                    self.root.join(RECORD_FILE).display()
                )));
            }
            let path = self.root.join(&name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
        }
        let stages = self.root.join("stages");
        for name in entries(&stages)? {
            // Only empty ones: remove_dir fails on anything else, which then stays.
            let _ = std::fs::remove_dir(stages.join(name));
        }
        let _ = std::fs::remove_dir(&stages);
        let record = self.root.join(RECORD_FILE);
        std::fs::remove_file(&record).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(io(&record)(e)),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Note that the job wrote `path` (inside the folder).
    pub fn add(&mut self, path: &Path) {
        if let Ok(rel) = path.strip_prefix(&self.root) {
            self.files.insert(rel.to_string_lossy().into_owned());
        }
    }

    /// Write `sample.json`: `record` with the job's `identity`, `status` and the files so far.
    pub fn write_record(
        &self,
        mut record: Value,
        identity: &Value,
        status: &str,
    ) -> Result<(), SamplingError> {
        record["status"] = json!(status);
        record["request"] = identity.clone();
        record["files"] = json!(self.files);
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.root.join(RECORD_FILE);
        let text = serde_json::to_string_pretty(&record).expect("records serialise") + "\n";
        difflab_pipeline::files::write_atomic(&path, text.as_bytes()).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("difflab-out-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn overwrite_removes_only_what_the_job_wrote_and_never_leaves_the_folder() {
        let dir = scratch("overwrite");
        let id = json!({"seed": 1});
        let (mut folder, _) = OutputFolder::open(&dir, OutputMode::Fresh, &id, "").unwrap();
        for f in ["000000.png", "grid.png"] {
            std::fs::write(dir.join(f), b"x").unwrap();
            folder.add(&dir.join(f));
        }
        folder.write_record(json!({}), &id, "complete").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();

        // Not empty: refused without a mode, naming the way out.
        let err = OutputFolder::open(&dir, OutputMode::Fresh, &id, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--overwrite") && err.contains("--resume"),
            "{err}"
        );
        // --overwrite removes the job's files and its record, keeps the user's.
        OutputFolder::open(&dir, OutputMode::Overwrite, &id, "").unwrap();
        assert_eq!(entries(&dir).unwrap(), ["notes.txt"]);

        // A record that lists a path outside the folder removes nothing outside it.
        let outside = scratch("victim");
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let evil = json!({"files": [format!("../{}/keep", outside.file_name().unwrap().to_string_lossy()), "/etc/passwd"]});
        std::fs::write(dir.join(RECORD_FILE), evil.to_string()).unwrap();
        let err = OutputFolder::open(&dir, OutputMode::Overwrite, &id, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a file inside the folder"), "{err}");
        assert!(outside.join("keep").exists());
        // A folder difflab did not write is never touched.
        std::fs::remove_file(dir.join(RECORD_FILE)).unwrap();
        let err = OutputFolder::open(&dir, OutputMode::Overwrite, &id, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no sample.json"), "{err}");
        for d in [dir, outside] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn resume_counts_the_same_jobs_images_and_refuses_another_job() {
        let dir = scratch("resume");
        let id = json!({"seed": 1, "n": 4});
        let (mut folder, _) = OutputFolder::open(&dir, OutputMode::Fresh, &id, "").unwrap();
        for f in ["000000.png", "000001.png", "000003.png"] {
            std::fs::write(dir.join(f), b"x").unwrap();
            folder.add(&dir.join(f));
        }
        folder.write_record(json!({}), &id, "running").unwrap();
        let (_, done) = OutputFolder::open(&dir, OutputMode::Resume, &id, "").unwrap();
        assert_eq!(done, 2, "the first gap ends what is kept");
        let other = json!({"seed": 2, "n": 4});
        let err = OutputFolder::open(&dir, OutputMode::Resume, &other, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("different job"), "{err}");
        let empty = scratch("resume-empty");
        assert!(OutputFolder::open(&empty, OutputMode::Resume, &id, "").is_err());
        for d in [dir, empty] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn records_from_before_file_lists_are_understood() {
        let record = json!({"num_images": 2, "stages": [{"name": "base"}, {"name": "sr"}]});
        let files = recorded_files(&record);
        for f in [
            "000001.png",
            "grid.png",
            "stages/base/000000.png",
            "trajectory.png",
        ] {
            assert!(files.contains(&f.to_string()), "{f}: {files:?}");
        }
        assert!(!files.iter().any(|f| f.starts_with("stages/sr")));
    }
}
