//! `OUT/runs/<point>/sweep-status.json`: where a point stands (running, done, failed), its
//! error, and its training timings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SweepError;

/// The status file's name inside a point's run directory.
pub const STATUS_FILE: &str = "sweep-status.json";

/// Where a point stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointState {
    /// Started and not finished (or the sweep died while it ran): resumed on the next run.
    Running,
    /// Training and every evaluation finished.
    Done,
    /// Training or an evaluation failed; retried on the next run.
    Failed,
}

/// The status of one point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointStatus {
    /// Running, done or failed.
    pub state: PointState,
    /// What ran last: `train` or `eval <tag>`.
    pub phase: String,
    /// The end of the failing command's output (failed points only).
    #[serde(default)]
    pub error: Option<String>,
    /// How many times the sweep started work on this point.
    pub attempts: u32,
    /// Unix time (s) the latest attempt started.
    pub started_at: f64,
    /// Unix time (s) the latest attempt ended.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Wall time (s) of the `difflab train` processes, summed over attempts (includes start-up,
    /// checkpoints and the final preview).
    #[serde(default)]
    pub train_seconds: f64,
    /// Optimiser steps those processes ran.
    #[serde(default)]
    pub trained_steps: u64,
    /// The run's latest checkpoint step.
    #[serde(default)]
    pub step: u64,
    /// Loss of the last training step (from the latest checkpoint's `state.json`).
    #[serde(default)]
    pub final_loss: Option<f64>,
    /// Training images per second of wall time: `trained_steps × batch_size / train_seconds`.
    #[serde(default)]
    pub images_per_sec: Option<f64>,
}

impl PointStatus {
    /// A fresh status for an attempt starting now.
    pub fn started(previous: Option<PointStatus>) -> Self {
        let now = unix_now();
        match previous {
            Some(p) => Self {
                state: PointState::Running,
                phase: "train".into(),
                error: None,
                attempts: p.attempts + 1,
                started_at: now,
                finished_at: None,
                ..p
            },
            None => Self {
                state: PointState::Running,
                phase: "train".into(),
                error: None,
                attempts: 1,
                started_at: now,
                finished_at: None,
                train_seconds: 0.0,
                trained_steps: 0,
                step: 0,
                final_loss: None,
                images_per_sec: None,
            },
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The status file of the run directory `run_dir`.
pub fn status_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATUS_FILE)
}

/// Read a point's status; `None` when it has none (never started) or it is unreadable.
pub fn read_status(run_dir: &Path) -> Option<PointStatus> {
    let text = std::fs::read_to_string(status_path(run_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Write a point's status atomically (temp file + rename).
pub fn write_status(run_dir: &Path, status: &PointStatus) -> Result<(), SweepError> {
    let path = status_path(run_dir);
    let text = serde_json::to_string_pretty(status).expect("statuses serialise");
    write_atomic(&path, &text)
}

/// Write `text` to `path` through a temp file in the same directory.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), SweepError> {
    let io = |error| SweepError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    difflab_pipeline::files::write_atomic(path, text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_counts_attempts() {
        let dir = std::env::temp_dir().join(format!("difflab-sweep-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_status(&dir), None);
        let mut s = PointStatus::started(None);
        s.state = PointState::Failed;
        s.error = Some("boom".into());
        s.train_seconds = 2.0;
        // A clock reading like 1795336046.5239565 need not survive JSON's shortest decimal
        // form to the last bit (serde_json without `float_roundtrip`); use an exact one.
        s.started_at = 1_795_336_046.5;
        write_status(&dir, &s).unwrap();
        let back = read_status(&dir).unwrap();
        assert_eq!(back, s);
        let again = PointStatus::started(Some(back));
        assert_eq!(again.attempts, 2);
        assert_eq!(again.state, PointState::Running);
        assert_eq!(again.error, None);
        assert_eq!(again.train_seconds, 2.0);
        let text = std::fs::read_to_string(status_path(&dir)).unwrap();
        assert!(text.contains("\"state\": \"failed\""), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
