//! `kind: folder`: every png/jpg/jpeg under a root, decoded on demand.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::csv::{LabelTable, read_labels, read_pairs};
use super::transform::load_image;
use super::{DataConfig, DataError, Dataset, Example, LabelMode, limited};

/// The image files under `root` (recursively, following links), as `/`-separated paths
/// relative to `root`, sorted byte-wise. Extensions png, jpg and jpeg match in any case.
pub fn list_images(root: &Path) -> Result<Vec<String>, DataError> {
    if !root.exists() {
        return Err(DataError::MissingPath {
            what: "data.path",
            path: root.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in WalkDir::new(root).follow_links(true) {
        let entry = entry.map_err(|e| DataError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            error: e.into(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()));
        if !is_image {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        files.push(rel.join("/"));
    }
    files.sort();
    Ok(files)
}

/// Images from a folder tree, with optional labels and paired conditioning images.
#[derive(Debug)]
pub struct FolderDataset {
    root: PathBuf,
    rel_paths: Vec<String>,
    len: usize,
    resolution: usize,
    channels: usize,
    hflip: bool,
    label_mode: LabelMode,
    labels: Option<LabelTable>,
    cond: Option<Vec<PathBuf>>,
}

impl FolderDataset {
    /// Walk the folder and read the CSV files (no image is decoded yet).
    pub fn open(config: &DataConfig) -> Result<Self, DataError> {
        let root = config
            .path
            .clone()
            .ok_or_else(|| DataError::Config("data.path is required for kind: folder".into()))?;
        let rel_paths = list_images(&root)?;
        if rel_paths.is_empty() {
            return Err(DataError::EmptyFolder(root));
        }
        let labels = match (&config.labels, config.label_mode) {
            (Some(csv), mode) if mode != LabelMode::None => {
                Some(read_labels(csv, mode, &root, &rel_paths)?)
            }
            _ => None,
        };
        let cond = match &config.cond_images {
            Some(csv) => Some(read_pairs(csv, &root, &rel_paths)?),
            None => None,
        };
        Ok(Self {
            len: limited(rel_paths.len(), config.limit),
            root,
            rel_paths,
            resolution: config.resolution as usize,
            channels: config.channels as usize,
            hflip: config.hflip,
            label_mode: config.label_mode,
            labels,
            cond,
        })
    }

    /// The file of example `index`.
    pub fn file(&self, index: usize) -> PathBuf {
        self.root.join(&self.rel_paths[index])
    }

    /// The path of example `index` relative to the root, as written in CSV files.
    pub fn relative_path(&self, index: usize) -> &str {
        &self.rel_paths[index]
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        DataError::check_index(index, self.len)?;
        let data = load_image(&self.file(index), self.resolution, self.channels)?;
        let cond = match &self.cond {
            Some(pairs) => Some(load_image(&pairs[index], self.resolution, self.channels)?),
            None => None,
        };
        let (mut class, mut labels) = (None, None);
        if let Some(table) = &self.labels {
            let ids = &table.per_image[index];
            match self.label_mode {
                LabelMode::Class => class = Some(ids[0] as i64),
                LabelMode::MultiHot => {
                    let mut v = vec![0.0f32; table.names.len()];
                    ids.iter().for_each(|&i| v[i] = 1.0);
                    labels = Some(v);
                }
                LabelMode::None => {}
            }
        }
        Ok(Example {
            data,
            class,
            labels,
            cond,
        })
    }

    fn shape(&self) -> Vec<i64> {
        let r = self.resolution as i64;
        vec![self.channels as i64, r, r]
    }

    fn num_classes(&self) -> Option<i64> {
        match (self.label_mode, &self.labels) {
            (LabelMode::Class, Some(t)) => Some(t.names.len() as i64),
            _ => None,
        }
    }

    fn label_dim(&self) -> Option<i64> {
        match (self.label_mode, &self.labels) {
            (LabelMode::MultiHot, Some(t)) => Some(t.names.len() as i64),
            _ => None,
        }
    }

    fn cond_shape(&self) -> Option<Vec<i64>> {
        self.cond.as_ref().map(|_| self.shape())
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "folder {}: {} images",
            self.root.display(),
            self.rel_paths.len()
        );
        if self.len < self.rel_paths.len() {
            s += &format!(" (first {} used)", self.len);
        }
        s += &format!(", {:?}", self.shape());
        if let Some(n) = self.num_classes() {
            s += &format!(", {n} classes");
        }
        if let Some(n) = self.label_dim() {
            s += &format!(", multi-hot labels ({n})");
        }
        if self.cond.is_some() {
            s += ", paired cond images";
        }
        if self.hflip {
            s += ", hflip";
        }
        s
    }

    fn hflip(&self) -> bool {
        self.hflip
    }

    fn label_names(&self) -> Option<Vec<String>> {
        self.labels.as_ref().map(|t| t.names.clone())
    }
}
