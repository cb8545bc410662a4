//! Reading generated samples back: a folder of PNGs (what `difflab sample` writes for images)
//! or a `samples.csv` (what it writes for vector data such as the 2-D toy).

use std::path::Path;

use tch::Tensor;

use crate::EvalError;

/// Every `*.png` directly in `dir` except `grid.png`, in name order, as `[N, C, H, W]` f32 in
/// [−1, 1] (`p/127.5 − 1`). Grayscale images give C = 1, anything else C = 3 (alpha is
/// composited on white). All images must have one size and channel count.
pub fn read_image_folder(dir: &Path) -> Result<Tensor, EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EvalError::file(dir, e))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png"))
                && p.file_name().is_some_and(|n| n != "grid.png")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EvalError::file(dir, "no PNG samples (other than grid.png)"));
    }
    let mut data = Vec::new();
    let mut shape: Option<[i64; 3]> = None;
    for file in &files {
        // Header checked before decoding (pixel and allocation limits).
        let img = difflab_data::decode_file(file).map_err(|e| EvalError::file(file, e))?;
        let (w, h) = (img.width() as i64, img.height() as i64);
        let (c, pixels): (i64, Vec<f32>) = match img.color().channel_count() {
            1 | 2 if !img.color().has_alpha() => (1, img.to_luma32f().into_raw()),
            _ => {
                let rgba = img.to_rgba32f();
                let mut out = vec![0.0f32; (3 * w * h) as usize];
                for (i, p) in rgba.pixels().enumerate() {
                    for ch in 0..3 {
                        out[ch * (w * h) as usize + i] = p[ch] * p[3] + (1.0 - p[3]);
                    }
                }
                (3, out)
            }
        };
        let this = [c, h, w];
        match shape {
            None => shape = Some(this),
            Some(s) if s != this => {
                return Err(EvalError::file(
                    file,
                    format!("image is {this:?} ([C, H, W]) but earlier samples are {s:?}"),
                ));
            }
            _ => {}
        }
        data.extend(pixels.into_iter().map(|v| v * 2.0 - 1.0));
    }
    let [c, h, w] = shape.expect("at least one image");
    Ok(Tensor::from_slice(&data).view([files.len() as i64, c, h, w]))
}

/// A `samples.csv` of comma-separated numbers, one sample per line (blank lines and lines
/// starting with `#` skipped), as `[N, D]` f32.
pub fn read_samples_csv(path: &Path) -> Result<Tensor, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::file(path, e))?;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let row = line
            .split(',')
            .map(|f| f.trim().parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EvalError::file(path, format!("line {}: {e}", line_no + 1)))?;
        // A diverged sampler writes NaN or inf: a metric over them would be meaningless.
        if let Some((col, x)) = row.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(EvalError::file(
                path,
                format!(
                    "line {}, value {}: {x} is not a finite number (did sampling diverge?)",
                    line_no + 1,
                    col + 1
                ),
            ));
        }
        if let Some(first) = rows.first()
            && first.len() != row.len()
        {
            return Err(EvalError::file(
                path,
                format!(
                    "line {}: {} values, earlier rows have {}",
                    line_no + 1,
                    row.len(),
                    first.len()
                ),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(EvalError::file(path, "no samples"));
    }
    let d = rows[0].len() as i64;
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_slice(&flat).view([rows.len() as i64, d]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_samples_are_refused_naming_the_line() {
        let path = std::env::temp_dir().join(format!("difflab-samples-{}.csv", std::process::id()));
        std::fs::write(&path, "0.5,1.0\n0.1,-0.2\n").unwrap();
        assert_eq!(read_samples_csv(&path).unwrap().size(), [2, 2]);
        for bad in ["inf", "NaN", "-inf"] {
            std::fs::write(&path, format!("0.5,1.0\n0.1,{bad}\n")).unwrap();
            let err = read_samples_csv(&path).unwrap_err().to_string();
            assert!(
                err.contains("line 2, value 2") && err.contains("not a finite"),
                "{err}"
            );
        }
        std::fs::remove_file(path).unwrap();
    }
}
