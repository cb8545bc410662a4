//! The two CSV files of folder datasets: labels (`file,label`) and paired conditioning images
//! (`file,cond_file`). The format is described in the `data` module docs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{DataError, LabelMode};

/// One data row: its 1-based line number and its two fields.
struct Row {
    line: usize,
    file: String,
    value: String,
}

/// Split one CSV line into fields, honouring double quotes.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("stray `\"` inside an unquoted field".into()),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) => {
                if was_quoted && !c.is_whitespace() {
                    return Err("text after a closing quote".into());
                }
                field.push(c);
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// The normalised spelling of a relative image path (as the folder walk writes it).
fn normalise(file: &str) -> String {
    let file = file.trim().replace('\\', "/");
    file.strip_prefix("./").unwrap_or(&file).to_string()
}

/// Read the data rows of a two-column CSV, skipping comments, blank lines and a header whose
/// second column is one of `headers`.
fn read_rows(path: &Path, headers: &[&str]) -> Result<Vec<Row>, DataError> {
    if !path.exists() {
        return Err(DataError::MissingPath {
            what: "CSV file",
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut rows = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim().trim_start_matches('\u{feff}');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |message: String| DataError::Csv {
            path: path.to_path_buf(),
            line,
            message,
        };
        let fields = split_fields(trimmed).map_err(err)?;
        let is_first = std::mem::replace(&mut first, false);
        if is_first
            && fields.len() == 2
            && fields[0].trim().eq_ignore_ascii_case("file")
            && headers
                .iter()
                .any(|h| fields[1].trim().eq_ignore_ascii_case(h))
        {
            continue;
        }
        if fields.len() != 2 {
            return Err(err(format!(
                "expected 2 fields `file,{}`, found {}",
                headers[0],
                fields.len()
            )));
        }
        let file = normalise(&fields[0]);
        if file.is_empty() {
            return Err(err("empty file name".into()));
        }
        rows.push(Row {
            line,
            file,
            value: fields[1].trim().to_string(),
        });
    }
    Ok(rows)
}

/// Check a row's file against the folder and against earlier rows; return its image index.
fn index_of(
    csv: &Path,
    row: &Row,
    files: &HashMap<String, usize>,
    seen: &mut HashMap<usize, usize>,
    root: &Path,
) -> Result<usize, DataError> {
    let err = |message: String| DataError::Csv {
        path: csv.to_path_buf(),
        line: row.line,
        message,
    };
    let Some(&index) = files.get(&row.file) else {
        return Err(err(format!(
            "`{}` is not an image under {}",
            row.file,
            root.display()
        )));
    };
    if let Some(previous) = seen.insert(index, row.line) {
        return Err(err(format!(
            "`{}` is already listed on line {previous}",
            row.file
        )));
    }
    Ok(index)
}

/// Fail unless every image has a row.
fn require_all(
    csv: &Path,
    rel_paths: &[String],
    seen: &HashMap<usize, usize>,
) -> Result<(), DataError> {
    let missing: Vec<&String> = (0..rel_paths.len())
        .filter(|i| !seen.contains_key(i))
        .map(|i| &rel_paths[i])
        .collect();
    if let Some(first) = missing.first() {
        return Err(DataError::Labels {
            path: csv.to_path_buf(),
            message: format!(
                "{} of {} images have no row, e.g. `{first}`",
                missing.len(),
                rel_paths.len()
            ),
        });
    }
    Ok(())
}

/// Per-image labels read from a labels CSV.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LabelTable {
    /// Index → name (for numeric labels, the numbers themselves).
    pub names: Vec<String>,
    /// Per image (folder order), its label indices (exactly one in class mode).
    pub per_image: Vec<Vec<usize>>,
}

/// Read a labels CSV for the images `rel_paths` (relative, `/`-separated, folder order).
pub(crate) fn read_labels(
    csv: &Path,
    mode: LabelMode,
    root: &Path,
    rel_paths: &[String],
) -> Result<LabelTable, DataError> {
    let rows = read_rows(csv, &["label", "labels"])?;
    let files: HashMap<String, usize> = rel_paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i))
        .collect();
    let mut seen = HashMap::new();
    let mut parsed: Vec<(usize, Vec<String>)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let index = index_of(csv, row, &files, &mut seen, root)?;
        let names: Vec<String> = row
            .value
            .split(';')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if mode == LabelMode::Class && names.len() != 1 {
            return Err(DataError::Csv {
                path: csv.to_path_buf(),
                line: row.line,
                message: format!(
                    "label_mode: class needs exactly one label per file, found {} (`{}`)",
                    names.len(),
                    row.value
                ),
            });
        }
        parsed.push((index, names));
    }
    require_all(csv, rel_paths, &seen)?;

    let all: BTreeSet<&String> = parsed.iter().flat_map(|(_, n)| n).collect();
    let numeric = !all.is_empty()
        && all
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok());
    let (names, lookup): (Vec<String>, HashMap<&String, usize>) = if numeric {
        let max = all
            .iter()
            .map(|n| n.parse::<usize>().unwrap())
            .max()
            .unwrap();
        let names = (0..=max).map(|i| i.to_string()).collect();
        let lookup = all.iter().map(|n| (*n, n.parse().unwrap())).collect();
        (names, lookup)
    } else {
        let names = all.iter().map(|n| (*n).clone()).collect();
        let lookup = all.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        (names, lookup)
    };
    if names.is_empty() {
        return Err(DataError::Labels {
            path: csv.to_path_buf(),
            message: "no labels at all (every label field is empty)".into(),
        });
    }
    let mut per_image = vec![Vec::new(); rel_paths.len()];
    for (index, row_names) in &parsed {
        let mut ids: Vec<usize> = row_names.iter().map(|n| lookup[n]).collect();
        ids.sort_unstable();
        ids.dedup();
        per_image[*index] = ids;
    }
    Ok(LabelTable { names, per_image })
}

/// Read a pairs CSV: each image's conditioning image file (relative to the CSV's folder).
pub(crate) fn read_pairs(
    csv: &Path,
    root: &Path,
    rel_paths: &[String],
) -> Result<Vec<PathBuf>, DataError> {
    let rows = read_rows(csv, &["cond_file", "cond"])?;
    let base = csv.parent().unwrap_or(Path::new(""));
    let files: HashMap<String, usize> = rel_paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i))
        .collect();
    let mut seen = HashMap::new();
    let mut pairs = vec![PathBuf::new(); rel_paths.len()];
    for row in &rows {
        let index = index_of(csv, row, &files, &mut seen, root)?;
        let cond = base.join(&row.value);
        if row.value.is_empty() || !cond.is_file() {
            return Err(DataError::Csv {
                path: csv.to_path_buf(),
                line: row.line,
                message: format!("conditioning image {} does not exist", cond.display()),
            });
        }
        pairs[index] = cond;
    }
    require_all(csv, rel_paths, &seen)?;
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_with_quotes() {
        assert_eq!(split_fields("a.png,cat").unwrap(), ["a.png", "cat"]);
        assert_eq!(
            split_fields("\"a, b.png\",\"say \"\"hi\"\"\"").unwrap(),
            ["a, b.png", "say \"hi\""]
        );
        assert_eq!(split_fields("a,b,c").unwrap().len(), 3);
        assert!(split_fields("\"a,b").is_err());
        assert!(split_fields("a\"b,c").is_err());
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise(" ./x/y.png "), "x/y.png");
        assert_eq!(normalise("x\\y.png"), "x/y.png");
    }
}
