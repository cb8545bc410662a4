//! Model-space tensors to image files: per-sample PNGs and a grid, written atomically.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use tch::{Kind, Tensor};

/// Writing images failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    /// The tensor is not `[B, C, H, W]` with C ∈ {1, 3, 4}.
    #[error(
        "cannot save a tensor of shape {0:?} as images: expected [B, C, H, W] with C = 1, 3 or 4"
    )]
    Shape(Vec<i64>),
    /// Filesystem or encoder error, with the path.
    #[error("writing {path}: {error}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error (in the message, so not a `source`).
        error: std::io::Error,
    },
}

/// Decode model-space images in [−1, 1] to `[B, H, W, C]` u8 on the CPU:
/// round(clamp(x/2 + 0.5, 0, 1) · 255), rounding half to even — exactly diffusers' decoding.
pub fn to_u8_nhwc(x: &Tensor) -> Result<Tensor, ImageIoError> {
    let shape = x.size();
    if shape.len() != 4 || ![1, 3, 4].contains(&shape[1]) {
        return Err(ImageIoError::Shape(shape));
    }
    Ok((x.to_kind(Kind::Float) / 2.0 + 0.5)
        .clamp(0.0, 1.0)
        .permute([0, 2, 3, 1])
        .to_device(tch::Device::Cpu)
        .multiply_scalar(255.0)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous())
}

/// One `[H, W, C]` u8 tensor as an image.
fn to_image(hwc: &Tensor) -> DynamicImage {
    let (h, w, c) = hwc.size3().expect("[H, W, C]");
    let data: Vec<u8> = Vec::try_from(hwc.flatten(0, -1)).expect("u8 data");
    let (w, h) = (w as u32, h as u32);
    match c {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, data).expect("sized")),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, data).expect("sized")),
        _ => DynamicImage::ImageRgba8(RgbaImage::from_raw(w, h, data).expect("sized")),
    }
}

/// Encode to PNG and write via a temporary file in the same folder, then rename: a crash never
/// leaves a truncated image behind.
pub fn write_png_atomic(image: &DynamicImage, path: &Path) -> Result<(), ImageIoError> {
    let err = |error: std::io::Error| ImageIoError::Write {
        path: path.to_path_buf(),
        error,
    };
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| err(std::io::Error::other(e)))?;
    difflab_files::write_atomic(path, &bytes).map_err(err)
}

/// Save each image of a `[B, C, H, W]` batch in [−1, 1] as `dir/{index:06}.png`, numbering from
/// `first_index`. Returns the paths written.
pub fn save_images(
    x: &Tensor,
    dir: &Path,
    first_index: usize,
) -> Result<Vec<PathBuf>, ImageIoError> {
    let u8s = to_u8_nhwc(x)?;
    std::fs::create_dir_all(dir).map_err(|error| ImageIoError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    (0..u8s.size()[0])
        .map(|i| {
            let path = dir.join(format!("{:06}.png", first_index + i as usize));
            write_png_atomic(&to_image(&u8s.get(i)), &path)?;
            Ok(path)
        })
        .collect()
}

/// Tile a `[B, C, H, W]` batch in [−1, 1] into one image with `columns` columns (rows as
/// needed) and a 2-pixel white border, and write it to `path`.
pub fn save_grid(x: &Tensor, columns: usize, path: &Path) -> Result<(), ImageIoError> {
    let u8s = to_u8_nhwc(x)?;
    let (b, h, w, c) = u8s.size4().expect("4-d");
    let cols = (columns.max(1) as i64).min(b.max(1));
    let rows = (b + cols - 1) / cols;
    let pad = 2;
    let canvas = Tensor::full(
        [rows * (h + pad) + pad, cols * (w + pad) + pad, c],
        255,
        (Kind::Uint8, tch::Device::Cpu),
    );
    for i in 0..b {
        let (r, col) = (i / cols, i % cols);
        let (y, x0) = (pad + r * (h + pad), pad + col * (w + pad));
        canvas.narrow(0, y, h).narrow(1, x0, w).copy_(&u8s.get(i));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| ImageIoError::Write {
            path: parent.to_path_buf(),
            error,
        })?;
    }
    write_png_atomic(&to_image(&canvas), path)
}

/// A square-ish number of grid columns for `n` images.
pub fn grid_columns(n: usize) -> usize {
    (n as f64).sqrt().ceil().max(1.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_matches_diffusers_rounding() {
        let x = Tensor::from_slice(&[-1.0f32, -2.0, 1.0, 3.0, 0.0, -0.5]).reshape([1, 1, 2, 3]);
        let u: Vec<u8> = Vec::try_from(to_u8_nhwc(&x).unwrap().flatten(0, -1)).unwrap();
        // x/2 + 0.5 = 0, (clamped) 0, 1, (clamped) 1, 0.5 → 127.5 → 128, 0.25 → 63.75 → 64.
        assert_eq!(u, vec![0, 0, 255, 255, 128, 64]);
    }

    #[test]
    fn rejects_wrong_shapes() {
        assert!(matches!(
            to_u8_nhwc(&Tensor::zeros(
                [2, 2, 4, 4],
                (Kind::Float, tch::Device::Cpu)
            )),
            Err(ImageIoError::Shape(_))
        ));
        assert!(matches!(
            to_u8_nhwc(&Tensor::zeros([3, 4, 4], (Kind::Float, tch::Device::Cpu))),
            Err(ImageIoError::Shape(_))
        ));
    }

    #[test]
    fn saves_numbered_pngs_and_a_grid() {
        let dir = std::env::temp_dir().join(format!("difflab-images-{}", std::process::id()));
        let x = Tensor::linspace(-1.0, 1.0, 5 * 3 * 4 * 6, (Kind::Float, tch::Device::Cpu))
            .reshape([5, 3, 4, 6]);
        let paths = save_images(&x, &dir, 7).unwrap();
        assert_eq!(paths.last().unwrap().file_name().unwrap(), "000011.png");
        let img = image::open(&paths[0]).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (6, 4));
        let want: Vec<u8> = Vec::try_from(to_u8_nhwc(&x).unwrap().get(0).flatten(0, -1)).unwrap();
        assert_eq!(img.into_raw(), want, "pixels round-trip");
        let grid = dir.join("grid.png");
        save_grid(&x, 3, &grid).unwrap();
        let g = image::open(&grid).unwrap();
        assert_eq!((g.width(), g.height()), (2 + 3 * 8, 2 + 2 * 6));
        assert!(
            std::fs::read_dir(&dir)
                .unwrap()
                .all(|e| !difflab_files::is_temp_name(&e.unwrap().file_name().to_string_lossy()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_path_names_the_path() {
        let x = Tensor::zeros([1, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
        let err = save_grid(&x, 1, Path::new("/proc/definitely/not/here/grid.png")).unwrap_err();
        assert!(err.to_string().contains("/proc/definitely"), "{err}");
    }
}
