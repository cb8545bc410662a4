//! Low-level raster operations on an [`RgbImage`]: rectangles, text and
//! anti-aliased thick polylines.

use image::{Rgb, RgbImage};

use crate::font::{ADVANCE, CAP_H, GLYPH_H, GLYPH_W, glyph};

/// An axis-aligned rectangle of whole pixels, `x0..x1` by `y0..y1`
/// (end-exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x0: i64,
    pub y0: i64,
    pub x1: i64,
    pub y1: i64,
}

impl Rect {
    pub fn width(&self) -> i64 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> i64 {
        self.y1 - self.y0
    }
}

/// Pixel width of `text` at integer `scale` (no trailing gap).
pub(crate) fn text_width(text: &str, scale: u32) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * i64::from(ADVANCE) - 1) * i64::from(scale)
    }
}

/// Pixel height of a line of text including descenders.
pub(crate) fn text_height(scale: u32) -> i64 {
    i64::from(GLYPH_H * scale)
}

/// Pixel height of capitals and digits.
pub(crate) fn cap_height(scale: u32) -> i64 {
    i64::from(CAP_H * scale)
}

/// Shortens `text` with a trailing `..` so it is at most `max_w` pixels wide.
pub(crate) fn fit_text(text: &str, scale: u32, max_w: i64) -> String {
    if text_width(text, scale) <= max_w {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut n = chars.len();
    while n > 0 {
        n -= 1;
        let candidate: String = chars[..n].iter().chain(['.', '.'].iter()).collect();
        if text_width(&candidate, scale) <= max_w {
            return candidate;
        }
    }
    String::new()
}

/// Thin wrapper over the image with clipped drawing primitives.
pub(crate) struct Canvas<'a> {
    pub img: &'a mut RgbImage,
}

impl Canvas<'_> {
    fn in_bounds(&self, x: i64, y: i64) -> bool {
        x >= 0 && y >= 0 && x < i64::from(self.img.width()) && y < i64::from(self.img.height())
    }

    /// Sets one pixel, ignoring coordinates outside the image.
    pub fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if self.in_bounds(x, y) {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    /// Blends `c` over the pixel with opacity `a` in `0..=1`.
    pub fn blend(&mut self, x: i64, y: i64, c: [u8; 3], a: f32) {
        if !self.in_bounds(x, y) || a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in p.0.iter_mut().zip(c) {
            let v = f32::from(*dst) * (1.0 - a) + f32::from(src) * a;
            *dst = v.round().clamp(0.0, 255.0) as u8;
        }
    }

    /// Fills the rectangle, clipped to the image.
    pub fn fill(&mut self, r: Rect, c: [u8; 3]) {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                self.put(x, y, c);
            }
        }
    }

    /// Draws a 1-pixel outline just inside the rectangle.
    pub fn outline(&mut self, r: Rect, c: [u8; 3]) {
        if r.width() <= 0 || r.height() <= 0 {
            return;
        }
        self.fill(Rect { y1: r.y0 + 1, ..r }, c);
        self.fill(Rect { y0: r.y1 - 1, ..r }, c);
        self.fill(Rect { x1: r.x0 + 1, ..r }, c);
        self.fill(Rect { x0: r.x1 - 1, ..r }, c);
    }

    /// Draws `text` with its top-left corner at `(x, y)`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
        self.glyphs(text, scale, |gx, gy| (x + gx, y + gy), c);
    }

    /// Draws `text` rotated 90 degrees counter-clockwise (reading bottom to
    /// top); `(x, y)` is the bottom-left corner of the rotated text block,
    /// which is `text_height` wide and `text_width` tall.
    pub fn text_up(&mut self, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
        self.glyphs(text, scale, |gx, gy| (x + gy, y - 1 - gx), c);
    }

    /// Rasterises `text` through the coordinate map `place`, which turns
    /// unrotated text-local pixel offsets into canvas coordinates.
    fn glyphs(
        &mut self,
        text: &str,
        scale: u32,
        place: impl Fn(i64, i64) -> (i64, i64),
        c: [u8; 3],
    ) {
        let s = i64::from(scale);
        for (i, ch) in text.chars().enumerate() {
            let ox = i as i64 * i64::from(ADVANCE) * s;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - col) & 1 == 0 {
                        continue;
                    }
                    for dy in 0..s {
                        for dx in 0..s {
                            let (px, py) = place(ox + i64::from(col) * s + dx, row as i64 * s + dy);
                            self.put(px, py, c);
                        }
                    }
                }
            }
        }
    }
}

/// Per-pixel coverage of one series inside a clip rectangle, so that the
/// overlapping segment ends of a polyline do not darken the joints.
pub(crate) struct Coverage {
    pub clip: Rect,
    pub alpha: Vec<f32>,
}

impl Coverage {
    pub fn new(clip: Rect) -> Self {
        let n = (clip.width().max(0) * clip.height().max(0)) as usize;
        Coverage {
            clip,
            alpha: vec![0.0; n],
        }
    }

    /// Adds a round-capped segment of total width `width` between two points
    /// in continuous pixel coordinates (pixel `(i, j)` spans `[i, i+1)`).
    pub fn segment(&mut self, a: (f64, f64), b: (f64, f64), width: f64) {
        let Some((a, b)) = clip_segment(a, b, self.clip, width) else {
            return;
        };
        let half = width / 2.0;
        let reach = half + 1.0;
        let xs = ((a.0.min(b.0) - reach).floor() as i64).max(self.clip.x0);
        let xe = ((a.0.max(b.0) + reach).ceil() as i64).min(self.clip.x1);
        let ys = ((a.1.min(b.1) - reach).floor() as i64).max(self.clip.y0);
        let ye = ((a.1.max(b.1) + reach).ceil() as i64).min(self.clip.y1);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let w = self.clip.width();
        for y in ys..ye {
            let cy = y as f64 + 0.5;
            for x in xs..xe {
                let cx = x as f64 + 0.5;
                let t = if len2 > 0.0 {
                    (((cx - a.0) * dx + (cy - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (px, py) = (a.0 + t * dx - cx, a.1 + t * dy - cy);
                let d = (px * px + py * py).sqrt();
                let cov = (half + 0.5 - d).clamp(0.0, 1.0) as f32;
                if cov > 0.0 {
                    let i = ((y - self.clip.y0) * w + (x - self.clip.x0)) as usize;
                    if cov > self.alpha[i] {
                        self.alpha[i] = cov;
                    }
                }
            }
        }
    }

    /// Blends `color` onto the canvas weighted by the accumulated coverage.
    pub fn composite(&self, canvas: &mut Canvas<'_>, color: [u8; 3]) {
        let w = self.clip.width();
        for (i, &a) in self.alpha.iter().enumerate() {
            if a > 0.0 {
                let i = i as i64;
                canvas.blend(self.clip.x0 + i % w, self.clip.y0 + i / w, color, a);
            }
        }
    }

    /// Sum of coverage inside `r` (used to place the legend where it hides
    /// the least data).
    pub fn ink_in(&self, r: Rect) -> f64 {
        let w = self.clip.width();
        let mut sum = 0.0;
        for y in r.y0.max(self.clip.y0)..r.y1.min(self.clip.y1) {
            for x in r.x0.max(self.clip.x0)..r.x1.min(self.clip.x1) {
                sum +=
                    f64::from(self.alpha[((y - self.clip.y0) * w + (x - self.clip.x0)) as usize]);
            }
        }
        sum
    }
}

/// Clips segment `a`-`b` to `r` grown by `pad` on every side
/// (Liang-Barsky). Returns `None` when nothing of it is inside.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    r: Rect,
    pad: f64,
) -> Option<((f64, f64), (f64, f64))> {
    let (xmin, xmax) = (r.x0 as f64 - pad, r.x1 as f64 + pad);
    let (ymin, ymax) = (r.y0 as f64 - pad, r.y1 as f64 + pad);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - xmin),
        (dx, xmax - a.0),
        (-dy, a.1 - ymin),
        (dy, ymax - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
            if t0 > t1 {
                return None;
            }
        }
    }
    Some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: [u8; 3] = [0, 0, 0];

    #[test]
    fn text_metrics() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("a", 1), 5);
        assert_eq!(text_width("ab", 2), 22);
        assert_eq!(fit_text("hello", 1, 100), "hello");
        let short = fit_text("a very long title indeed", 1, 40);
        assert!(text_width(&short, 1) <= 40);
        assert!(short.ends_with(".."));
    }

    #[test]
    fn text_is_drawn_inside_its_box() {
        let mut img = RgbImage::from_pixel(40, 20, Rgb([255; 3]));
        Canvas { img: &mut img }.text(2, 3, "H1", 2, BLACK);
        let w = text_width("H1", 2);
        let mut dark = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == BLACK {
                dark += 1;
                let (x, y) = (i64::from(x), i64::from(y));
                assert!(x >= 2 && x < 2 + w && y >= 3 && y < 3 + cap_height(2));
            }
        }
        assert!(dark > 20);
    }

    #[test]
    fn rotated_text_stays_in_its_box() {
        let mut img = RgbImage::from_pixel(30, 60, Rgb([255; 3]));
        Canvas { img: &mut img }.text_up(5, 50, "Ab", 1, BLACK);
        let w = text_width("Ab", 1);
        let mut dark = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == BLACK {
                dark += 1;
                let (x, y) = (i64::from(x), i64::from(y));
                assert!(x >= 5 && x < 5 + text_height(1), "x = {x}");
                assert!(y < 50 && y >= 50 - w, "y = {y}");
            }
        }
        assert!(dark > 10);
    }

    #[test]
    fn coverage_is_clipped_and_solid_on_the_line() {
        let clip = Rect {
            x0: 10,
            y0: 10,
            x1: 30,
            y1: 30,
        };
        let mut cov = Coverage::new(clip);
        cov.segment((0.0, 20.0), (100.0, 20.0), 2.0);
        let w = clip.width() as usize;
        // Rows 19 and 20 (centres 19.5 and 20.5) are 0.5 px from the line.
        for x in 0..w {
            assert_eq!(cov.alpha[(19 - 10) * w + x], 1.0);
            assert_eq!(cov.alpha[(20 - 10) * w + x], 1.0);
            assert_eq!(cov.alpha[(15 - 10) * w + x], 0.0);
        }
        assert!(clip_segment((0.0, 0.0), (5.0, 5.0), clip, 2.0).is_none());
    }
}
