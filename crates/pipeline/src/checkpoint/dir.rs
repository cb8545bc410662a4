//! The checkpoints directory: atomic writes, the `latest` pointer and pruning.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Tensor, nn::VarStore};

use super::is_float;
use super::safetensors::write_safetensors;
use super::{
    CheckpointError, EMA_FILE, KEEP_FILE, LATEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use difflab_files as files;

/// What one checkpoint holds.
pub struct CheckpointContents<'a> {
    /// Optimizer steps completed; the directory is `step-<step>`.
    pub step: u64,
    /// The model's variables (all of them, trainable or not).
    pub model: &'a VarStore,
    /// The EMA copy of the model, if training keeps one.
    pub ema: Option<&'a VarStore>,
    /// The optimizer's state as named tensors (moments and step counts).
    pub optimizer: Vec<(String, Tensor)>,
    /// Run state saved as `state.json`: data cursor, RNG scheme, versions, config fingerprint —
    /// opaque here, except that `"step"` is set to [`CheckpointContents::step`] (a JSON object
    /// or null is expected; a different `"step"` already in it is an error).
    pub state: serde_json::Value,
}

/// A directory of checkpoints (`runs/<name>/checkpoints`); see the [module docs](super) for
/// the layout.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    root: PathBuf,
}

/// `step-<N>` → N; anything else (including `step-<N>.tmp-<pid>`) → None.
fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    let step: u64 = digits.parse().ok()?;
    (format!("{step}") == digits).then_some(step)
}

/// The directory name of step `step`.
fn step_name(step: u64) -> String {
    format!("step-{step}")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// fsync a directory, so that renames inside it survive a power cut.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Write `bytes` to `path`, fsynced.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Remove `path` if it exists (a file or a directory tree).
fn remove_any(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
    }
}

/// A VarStore's variables, sorted by name.
fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    vars.into_iter().collect()
}

/// Fail with [`CheckpointError::NonFinite`] if a floating-point tensor holds NaN or ±inf.
fn check_finite(part: &str, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let _guard = tch::no_grad_guard();
    for (name, tensor) in tensors {
        if is_float(tensor.kind())
            && tensor.numel() > 0
            && tensor.isfinite().all().int64_value(&[]) == 0
        {
            return Err(CheckpointError::NonFinite {
                tensor: format!("{part}:{name}"),
            });
        }
    }
    Ok(())
}

impl CheckpointDir {
    /// The checkpoints directory at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where step `step`'s checkpoint lives (whether or not it exists).
    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(step_name(step))
    }

    /// Write checkpoint `step-<N>` and return its directory.
    ///
    /// 1. Every tensor is checked first: NaN/inf anywhere → [`CheckpointError::NonFinite`]
    ///    naming it, and nothing is written.
    /// 2. The files are written and fsynced into a fresh `step-<N>.tmp-<pid>-<random>` (created
    ///    exclusively: never through a planted symlink), which is then renamed
    ///    to `step-<N>` (replacing an existing `step-<N>`, e.g. after a resume) — so a step
    ///    directory only ever exists complete.
    /// 3. `latest` is replaced atomically (written to a temporary file, then renamed).
    /// 4. With `keep_last > 0`, the oldest step directories beyond the newest `keep_last` are
    ///    deleted, except the one just written and any holding a `KEEP` file (`keep_last = 0`
    ///    keeps everything).
    ///
    /// Any I/O error (disk full, no permission) names the path; before step 3 it leaves the
    /// previous checkpoint and `latest` as they were and removes the temporary directory. An
    /// error from pruning (step 4) comes after the new checkpoint and `latest` are in place.
    pub fn write(
        &self,
        c: &CheckpointContents,
        keep_last: usize,
    ) -> Result<PathBuf, CheckpointError> {
        let model = sorted_variables(c.model);
        let ema = c.ema.map(sorted_variables);
        let optimizer = &c.optimizer;
        check_finite("model", &model)?;
        if let Some(ema) = &ema {
            check_finite("ema", ema)?;
        }
        check_finite("optimizer", optimizer)?;
        let state = self.state_json(c)?;

        let root = &self.root;
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let name = step_name(c.step);
        let target = root.join(&name);
        let tmp = files::create_temp_dir(&target).map_err(io_err(&target))?;
        let written = (|| {
            write_safetensors(&tmp.join(MODEL_FILE), &model)?;
            if let Some(ema) = &ema {
                write_safetensors(&tmp.join(EMA_FILE), ema)?;
            }
            write_safetensors(&tmp.join(OPTIMIZER_FILE), optimizer)?;
            write_file(&tmp.join(STATE_FILE), &state)?;
            sync_dir(&tmp)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let replaced = files::temp_path(&target);
        let moved = (|| {
            if target.exists() {
                std::fs::rename(&target, &replaced).map_err(io_err(&target))?;
            }
            std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
            sync_dir(root)
        })();
        if let Err(e) = moved {
            let _ = std::fs::remove_dir_all(&tmp);
            if replaced.exists() && !target.exists() {
                let _ = std::fs::rename(&replaced, &target);
            }
            return Err(e);
        }
        let _ = remove_any(&replaced);

        let latest = root.join(LATEST_FILE);
        files::write_atomic(&latest, format!("{name}\n").as_bytes()).map_err(io_err(&latest))?;
        sync_dir(root)?;

        self.prune(keep_last, c.step)?;
        Ok(target)
    }

    /// `state.json` bytes: `c.state` with `"step"` set.
    fn state_json(&self, c: &CheckpointContents) -> Result<Vec<u8>, CheckpointError> {
        let file = self.step_dir(c.step).join(STATE_FILE);
        let mismatch = |reason: String| CheckpointError::Mismatch {
            file: file.clone(),
            tensor: "step".into(),
            reason,
        };
        let mut state = match &c.state {
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::Object(map) => map.clone(),
            other => {
                return Err(mismatch(format!(
                    "state must be a JSON object, got {other}"
                )));
            }
        };
        match state.get("step") {
            None => {
                state.insert("step".into(), c.step.into());
            }
            Some(s) if s.as_u64() == Some(c.step) => {}
            Some(s) => {
                return Err(mismatch(format!(
                    "state says step {s}, checkpoint is for step {}",
                    c.step
                )));
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(state))
            .map_err(|e| mismatch(e.to_string()))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Delete the step directories beyond the newest `keep_last` (see [`CheckpointDir::write`]).
    /// Each is first renamed to a temporary name (`step-<N>.tmp-…`) so that a crash mid-delete never
    /// leaves a partial directory that looks complete.
    fn prune(&self, keep_last: usize, written: u64) -> Result<(), CheckpointError> {
        if keep_last == 0 {
            return Ok(());
        }
        let mut prunable: Vec<(u64, PathBuf)> = self
            .list()?
            .into_iter()
            .filter(|(_, dir)| !dir.join(KEEP_FILE).exists())
            .collect();
        prunable.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        for (step, dir) in prunable.into_iter().skip(keep_last) {
            if step == written {
                continue;
            }
            let doomed = files::temp_path(&dir);
            std::fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
            std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
        }
        Ok(())
    }

    /// The checkpoint `latest` points to; `None` when there is no checkpoint yet. Without a
    /// `latest` file (a crash right after the first directory was renamed into place) the
    /// newest complete `step-<N>` is used. Errors if `latest` is unreadable, malformed, or
    /// names a directory that does not exist.
    pub fn latest(&self) -> Result<Option<PathBuf>, CheckpointError> {
        let pointer = self.root.join(LATEST_FILE);
        let text = match std::fs::read_to_string(&pointer) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(self.list()?.pop().map(|(_, dir)| dir));
            }
            Err(e) => return Err(io_err(&pointer)(e)),
        };
        let name = text.trim();
        if parse_step_name(name).is_none() {
            return Err(CheckpointError::Corrupt {
                path: pointer,
                reason: format!("expected `step-<N>`, found {name:?}"),
            });
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(CheckpointError::Corrupt {
                reason: format!("points to {}, which does not exist", dir.display()),
                path: pointer,
            });
        }
        Ok(Some(dir))
    }

    /// Remove what killed runs left here (temporary `*.tmp-*` folders and files, see
    /// [`crate::files::remove_leftovers`]); returns them.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, CheckpointError> {
        files::remove_leftovers(&self.root).map_err(io_err(&self.root))
    }

    /// The complete checkpoints, `(step, directory)` sorted by step; temporary directories
    /// (`*.tmp-*`) and other entries are ignored. Empty when the directory does not exist.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let Some(step) = entry.file_name().to_str().and_then(parse_step_name) else {
                continue;
            };
            if entry.path().is_dir() {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }
}
