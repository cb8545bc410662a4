//! Files written safely: names that may become paths checked first, every temporary file or
//! folder created exclusively under an unpredictable name (never through a symlink someone
//! planted there), then renamed into place.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker every temporary name carries: `<name>.tmp-<pid>-<random>`.
pub const TMP_MARKER: &str = ".tmp-";

/// Check that `value`, given for config key `key`, can name a file or folder inside the folder
/// the user chose: a plain name of letters, digits, `-`, `_` and `.`, not empty, not `.` or
/// `..`, at most 128 bytes. The error names the key and the value.
pub fn check_name(key: &str, value: &str) -> Result<(), String> {
    let plain = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && !value.contains(TMP_MARKER)
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "invalid {key} = {value:?}: it names a file or folder, so it must be a plain name of letters, digits, '-', '_' and '.' (no '/', no '..', not absolute, at most 128 bytes)"
        ))
    }
}

/// An unpredictable suffix: the process id and 64 bits from the standard library's randomly
/// keyed hasher over a per-process counter.
fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}

/// A fresh temporary name beside `path`: `<name>.tmp-<pid>-<random>` in the same folder (so
/// renaming it onto `path` is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!("{name}{TMP_MARKER}{}", random_suffix()))
}

/// Write `bytes` to `path` atomically: into a new temporary file beside it (created with
/// `O_CREAT | O_EXCL`, which fails rather than follow a symlink at that name), fsynced, then
/// renamed onto `path`. A reader sees the old file or the new one, never a mix; on error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Create a new temporary folder beside `path` (`create_dir` fails if anything, a symlink
/// included, is at the name) and return it.
pub fn create_temp_dir(path: &Path) -> std::io::Result<PathBuf> {
    let tmp = temp_path(path);
    std::fs::create_dir(&tmp)?;
    Ok(tmp)
}

/// Whether `name` is a temporary name of [`temp_path`] (or of the older `<name>.tmp-<pid>`
/// scheme).
pub fn is_temp_name(name: &str) -> bool {
    name.contains(TMP_MARKER)
}

/// Remove what killed processes left in `dir`: every entry whose name carries
/// [`TMP_MARKER`]. Returns what was removed (symlinks are removed, never followed). For a
/// folder that is not difflab's alone, see [`remove_leftovers_of`].
pub fn remove_leftovers(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    remove_leftovers_of(dir, &[])
}

/// [`remove_leftovers`], limited to the temporary names of the files in `names`
/// (`<name>.tmp-…`); all temporary names when `names` is empty.
pub fn remove_leftovers_of(dir: &Path, names: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let ours = entry.file_name().to_str().is_some_and(|n| {
            is_temp_name(n)
                && (names.is_empty()
                    || names
                        .iter()
                        .any(|f| n.strip_prefix(f).is_some_and(|r| r.starts_with(TMP_MARKER))))
        });
        if !ours {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_folder_are_refused() {
        for good in ["base", "sr-256", "expert_0", "run.v2"] {
            assert!(check_name("name", good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\\b", "a b", "x\ny", "$(rm)", "a.tmp-1",
        ] {
            let err = check_name("cascade.stages[0].name", bad).unwrap_err();
            assert!(err.contains("cascade.stages[0].name"), "{err}");
        }
        assert!(check_name("name", &"x".repeat(129)).is_err());
    }

    #[test]
    fn atomic_writes_never_follow_a_planted_symlink() {
        let dir = std::env::temp_dir().join(format!("difflab-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = dir.join("state.json");
        // Whatever name an attacker guesses, the temporary name is fresh each time.
        let (a, b) = (temp_path(&target), temp_path(&target));
        assert_ne!(a, b);
        std::os::unix::fs::symlink(&victim, &a).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // A leftover (the planted link here) is removed, the link itself, not its target.
        let removed = remove_leftovers(&dir).unwrap();
        assert_eq!(removed, vec![a]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
