//! The run directory layout: `config.yaml`, `checkpoints/`, `samples/`, `tensorboard/`.

use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointDir, CheckpointError};

/// Paths inside one run directory (default `runs/<name>`).
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The run directory.
    pub root: PathBuf,
}

impl RunDir {
    /// The layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// `config.yaml`: the fully resolved config of the run.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.yaml")
    }
    /// `checkpoints/`.
    pub fn checkpoints(&self) -> CheckpointDir {
        CheckpointDir::new(self.root.join("checkpoints"))
    }
    /// `samples/`: preview grids.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
    /// `tensorboard/`: event files.
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tensorboard")
    }
    /// True when a previous run left checkpoints or a config here.
    pub fn is_used(&self) -> bool {
        self.config().exists() || self.root.join("checkpoints").exists()
    }
}

/// A checkpoint directory from what a user typed: a checkpoint dir (`…/step-N`), a run dir
/// (its latest checkpoint), or `…/latest` (the pointer's target).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join("model.safetensors").exists() {
        return Ok(path.to_path_buf());
    }
    let (checkpoints, what) = if path.file_name().is_some_and(|n| n == "latest") {
        let parent = path.parent().unwrap_or(Path::new("."));
        let dir = if parent.file_name().is_some_and(|n| n == "checkpoints") {
            parent.to_path_buf()
        } else {
            parent.join("checkpoints")
        };
        (dir, path)
    } else {
        (path.join("checkpoints"), path)
    };
    CheckpointDir::new(checkpoints)
        .latest()?
        .ok_or_else(|| CheckpointError::Missing {
            path: what.to_path_buf(),
        })
}

/// Exclusive use of a run folder by one process (an advisory `flock` on `RUN/.lock`, released
/// when this is dropped or the process dies). The lock file holds the holder's process id.
/// A folder the lock created and nothing else was written to is removed again on drop, so a
/// run that fails its checks leaves nothing behind.
#[derive(Debug)]
pub struct RunLock {
    file: Option<std::fs::File>,
    root: PathBuf,
    created: bool,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_lock = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .all(|e| e.file_name() == LOCK_FILE)
            })
            .unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_file(self.root.join(LOCK_FILE));
            drop(self.file.take());
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

/// The lock file of a run folder.
const LOCK_FILE: &str = ".lock";

impl RunDir {
    /// Take the run folder for this process, creating it if needed; fails at once, naming the
    /// holder's process id, when another process (a second `difflab train`) holds it.
    pub fn lock(&self) -> Result<RunLock, CheckpointError> {
        use std::io::{Read, Seek, Write};
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| CheckpointError::Io { path, error }
        };
        let created = !self.root.exists();
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(CheckpointError::InUse {
                    path: self.root.clone(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io(&path)(error)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{}", std::process::id()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        Ok(RunLock {
            file: Some(file),
            root: self.root.clone(),
            created,
        })
    }
}
