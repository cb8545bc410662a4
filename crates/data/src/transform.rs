//! Image preprocessing on planar `[C, H, W]` f32 buffers: decode to [0, 1], channel policy,
//! antialiased separable resize, centre crop, flip, and the map to [−1, 1].

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::DataError;

/// A planar image, values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// Resampling kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Linear interpolation (tent, support 1).
    Linear,
    /// Catmull-Rom cubic (Keys, a = −0.5, support 2).
    CatmullRom,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Linear => 1.0,
            Self::CatmullRom => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Linear => (1.0 - x).max(0.0),
            Self::CatmullRom => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// The most pixels an image file may have (a decompression bomb declares billions in a few
/// bytes): 64 megapixels, e.g. 8192 × 8192.
pub const MAX_PIXELS: u64 = 64 << 20;

/// Read and decode an image file, applying its EXIF orientation. Its header is checked first:
/// more than [`MAX_PIXELS`] pixels, or more than 1 GiB of decoded data, is an error naming
/// the file, before anything is decoded.
pub fn decode_file(path: &Path) -> Result<DynamicImage, DataError> {
    let io = |error: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        error,
    };
    let decode = |e: image::ImageError| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut reader = ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 16);
    limits.max_image_height = Some(1 << 16);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: format!(
                "{w} × {h} pixels is more than the {MAX_PIXELS} difflab reads (a corrupt or hostile header?)"
            ),
        });
    }
    let orientation = decoder.orientation().map_err(decode)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Rec. 601 luma of linear-in-file RGB values (what PIL's `convert("L")` computes).
pub(crate) fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// A decoded image as `channels` (1 or 3) planes in [0, 1]: alpha composited on white, gray
/// repeated to RGB, or RGB reduced to luma.
pub(crate) fn to_planes(image: &DynamicImage, channels: usize) -> Planes {
    let gray = !image.color().has_color();
    let rgba = image.to_rgba32f();
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let n = w * h;
    let mut data = vec![0.0f32; channels * n];
    for (i, p) in rgba.pixels().enumerate() {
        let [r, g, b, a] = p.0;
        let a = a.clamp(0.0, 1.0);
        let over_white = |c: f32| c * a + (1.0 - a);
        let (r, g, b) = (over_white(r), over_white(g), over_white(b));
        if channels == 1 {
            data[i] = if gray { r } else { luma(r, g, b) };
        } else {
            data[i] = r;
            data[n + i] = g;
            data[2 * n + i] = b;
        }
    }
    Planes {
        c: channels,
        h,
        w,
        data,
    }
}

/// Contribution of source samples to each output sample along one axis.
struct AxisWeights {
    /// Per output sample: first source index and its normalised weights.
    taps: Vec<(usize, Vec<f32>)>,
}

/// Weights for resampling `n_in` samples to `n_out`, keeping outputs `keep.0..keep.1`. When
/// shrinking, the kernel is stretched by the scale factor so that each output averages every
/// input under it (antialiasing).
fn axis_weights(n_in: usize, n_out: usize, keep: (usize, usize), filter: Filter) -> AxisWeights {
    let scale = n_in as f64 / n_out as f64;
    let stretch = scale.max(1.0);
    let support = filter.support() * stretch;
    let taps = (keep.0..keep.1)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let first = ((centre - support - 0.5).ceil().max(0.0)) as usize;
            let last = ((centre + support - 0.5).floor() as usize).min(n_in - 1);
            let mut weights: Vec<f64> = (first..=last)
                .map(|j| filter.weight((j as f64 + 0.5 - centre) / stretch))
                .collect();
            let sum: f64 = weights.iter().sum();
            if sum.abs() < 1e-12 {
                // Cannot happen for these kernels; fall back to the nearest sample.
                weights.iter_mut().for_each(|w| *w = 0.0);
                let nearest = (centre.floor() as usize).clamp(first, last);
                weights[nearest - first] = 1.0;
            } else {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            (first, weights.into_iter().map(|w| w as f32).collect())
        })
        .collect();
    AxisWeights { taps }
}

/// Resize so the shorter side is `size` (aspect kept, longer side rounded), then crop the
/// centre `size × size` square. Output values are clamped to [0, 1].
pub(crate) fn resize_shorter_and_crop(src: &Planes, size: usize, filter: Filter) -> Planes {
    let (h, w) = (src.h, src.w);
    let (nh, nw) = if h <= w {
        (
            size,
            ((w as f64 * size as f64 / h as f64).round() as usize).max(size),
        )
    } else {
        (
            ((h as f64 * size as f64 / w as f64).round() as usize).max(size),
            size,
        )
    };
    let (y0, x0) = ((nh - size) / 2, (nw - size) / 2);
    if (h, w) == (size, size) {
        return src.clone();
    }
    let wx = axis_weights(w, nw, (x0, x0 + size), filter);
    let wy = axis_weights(h, nh, (y0, y0 + size), filter);
    let mut out = vec![0.0f32; src.c * size * size];
    let mut rows = vec![0.0f32; h * size];
    for ch in 0..src.c {
        let plane = &src.data[ch * h * w..(ch + 1) * h * w];
        // Horizontal pass: h rows of `size` columns.
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for (x, (first, weights)) in wx.taps.iter().enumerate() {
                let s: f32 = weights.iter().zip(&row[*first..]).map(|(a, b)| a * b).sum();
                rows[y * size + x] = s;
            }
        }
        // Vertical pass.
        let dst = &mut out[ch * size * size..(ch + 1) * size * size];
        for (y, (first, weights)) in wy.taps.iter().enumerate() {
            let dst_row = &mut dst[y * size..(y + 1) * size];
            for (k, wgt) in weights.iter().enumerate() {
                let src_row = &rows[(first + k) * size..(first + k + 1) * size];
                for (d, s) in dst_row.iter_mut().zip(src_row) {
                    *d += wgt * s;
                }
            }
            dst_row.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
    }
    Planes {
        c: src.c,
        h: size,
        w: size,
        data: out,
    }
}

/// [0, 1] → [−1, 1].
pub(crate) fn to_model_range(mut data: Vec<f32>) -> Vec<f32> {
    data.iter_mut().for_each(|v| *v = *v * 2.0 - 1.0);
    data
}

/// Decode a file and run the whole preprocessing: planes, resize + crop, [−1, 1].
pub fn load_image(path: &Path, resolution: usize, channels: usize) -> Result<Vec<f32>, DataError> {
    let image = decode_file(path)?;
    if image.width() == 0 || image.height() == 0 {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: "image has no pixels".into(),
        });
    }
    let planes = to_planes(&image, channels);
    let planes = resize_shorter_and_crop(&planes, resolution, Filter::CatmullRom);
    Ok(to_model_range(planes.data))
}

/// Mirror every row of a `[C, H, W]` buffer (given `W`) in place.
pub(crate) fn hflip_in_place(data: &mut [f32], width: usize) {
    for row in data.chunks_exact_mut(width) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(c: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Planes {
        let mut data = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    data.push(f(ch, y, x));
                }
            }
        }
        Planes { c, h, w, data }
    }

    #[test]
    fn constant_image_stays_constant_at_any_scale() {
        let src = planes(3, 37, 91, |c, _, _| 0.2 + 0.3 * c as f32);
        for size in [1, 8, 32, 64, 200] {
            for filter in [Filter::Linear, Filter::CatmullRom] {
                let out = resize_shorter_and_crop(&src, size, filter);
                assert_eq!((out.c, out.h, out.w), (3, size, size));
                for (i, v) in out.data.iter().enumerate() {
                    let want = 0.2 + 0.3 * (i / (size * size)) as f32;
                    assert!((v - want).abs() < 1e-5, "{size} {filter:?} {v} {want}");
                }
            }
        }
    }

    #[test]
    fn integer_downscale_averages_blocks() {
        // A 1-pixel checkerboard shrunk 8× must be flat gray (no aliasing), not a pattern.
        let src = planes(1, 64, 64, |_, y, x| ((x + y) % 2) as f32);
        let out = resize_shorter_and_crop(&src, 8, Filter::CatmullRom);
        for v in &out.data {
            assert!((v - 0.5).abs() < 0.02, "{v}");
        }
    }

    #[test]
    fn crop_keeps_the_centre() {
        // Wide image: left third black, middle white, right third black.
        let src = planes(
            1,
            30,
            90,
            |_, _, x| if (30..60).contains(&x) { 1.0 } else { 0.0 },
        );
        let out = resize_shorter_and_crop(&src, 30, Filter::CatmullRom);
        assert!(out.data.iter().all(|&v| v == 1.0));
        // Tall image: top rows distinct from bottom rows survive the crop in order.
        let src = planes(1, 40, 20, |_, y, _| y as f32 / 39.0);
        let out = resize_shorter_and_crop(&src, 10, Filter::Linear);
        let first = out.data[0];
        let last = out.data[99];
        assert!(first > 0.2 && last < 0.8 && first < last, "{first} {last}");
    }

    #[test]
    fn alpha_composites_on_white_and_luma_weights() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0])); // transparent black -> white
        rgba.put_pixel(1, 0, image::Rgba([255, 0, 0, 255])); // opaque red
        let img = DynamicImage::ImageRgba8(rgba);
        let p3 = to_planes(&img, 3);
        assert_eq!(p3.data, vec![1.0, 1.0, 1.0, 0.0, 1.0, 0.0]);
        let p1 = to_planes(&img, 1);
        assert!((p1.data[0] - 1.0).abs() < 1e-6 && (p1.data[1] - 0.299).abs() < 1e-6);
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut d = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        hflip_in_place(&mut d, 3);
        assert_eq!(d, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }
}
