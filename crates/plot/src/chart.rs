//! Single line charts: data model, layout and rendering.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::PlotError;
use crate::canvas::{Canvas, Coverage, Rect, cap_height, fit_text, text_height, text_width};
use crate::ticks::{Axis, Ticks, padded_range, ticks, transform};

/// How values along an axis are mapped to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// Evenly spaced values.
    #[default]
    Linear,
    /// Base-10 logarithmic; values `<= 0` cannot be shown and are skipped.
    Log10,
}

/// Default series colours (the "tab10" palette), used in order for series
/// without an explicit [`Series::color`].
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Width of data lines in pixels.
const LINE_WIDTH: f64 = 2.0;
/// Fraction of the data span added on each side of the x range.
const X_MARGIN: f64 = 0.02;
/// Fraction of the data span added on each side of the y range.
const Y_MARGIN: f64 = 0.05;

const WHITE: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [20, 20, 20];
const AXIS: [u8; 3] = [50, 50, 50];
const GRID: [u8; 3] = [228, 228, 228];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];

/// One named line: points `(x, y)` joined in the order given.
///
/// Points with a non-finite coordinate (or a non-positive one on a log
/// axis) are skipped and break the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// Data points `(x, y)`, drawn in this order.
    pub points: Vec<(f64, f64)>,
    /// Line colour; `None` picks from [`PALETTE`] by series index.
    pub color: Option<[u8; 3]>,
}

impl Series {
    /// A series with the given name and points and a palette colour.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            color: None,
        }
    }

    /// A series of `ys` plotted against their index `0, 1, 2, ...`.
    pub fn from_ys(name: impl Into<String>, ys: &[f64]) -> Self {
        Self::new(
            name,
            ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
        )
    }

    /// Sets an explicit line colour.
    pub fn with_color(mut self, rgb: [u8; 3]) -> Self {
        self.color = Some(rgb);
        self
    }
}

/// A line chart: axes with ticks, title, axis labels, one or more series
/// and (for two or more series) a legend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// Title drawn above the plot (may be empty).
    pub title: String,
    /// Label under the x axis (may be empty).
    pub x_label: String,
    /// Label left of the y axis, drawn rotated (may be empty).
    pub y_label: String,
    /// Scale of the x axis.
    pub x_scale: Scale,
    /// Scale of the y axis.
    pub y_scale: Scale,
    /// The lines to draw, later ones on top.
    pub series: Vec<Series>,
}

/// Where everything goes in one rendered chart.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The axes box, border included.
    pub plot: Rect,
    pub x: Axis,
    pub y: Axis,
    pub x_ticks: Ticks,
    pub y_ticks: Ticks,
    /// Integer text scale.
    pub s: u32,
    pub pad: i64,
    pub gap: i64,
    pub tick_len: i64,
}

impl Layout {
    /// The area inside the axes border where data is drawn.
    pub fn inner(&self) -> Rect {
        Rect {
            x0: self.plot.x0 + 1,
            y0: self.plot.y0 + 1,
            x1: self.plot.x1 - 1,
            y1: self.plot.y1 - 1,
        }
    }
}

/// Integer text scale for an image of this size: 5x7 glyphs at scale 1
/// are only legible on small thumbnails.
fn text_scale(width: u32, height: u32) -> u32 {
    match width.min(height) {
        0..300 => 1,
        300..900 => 2,
        _ => 3,
    }
}

impl Chart {
    /// An empty chart with linear axes and the given title.
    pub fn new(title: impl Into<String>) -> Self {
        Chart {
            title: title.into(),
            ..Chart::default()
        }
    }

    /// Sets the x-axis label.
    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    /// Sets the y-axis label.
    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// Uses a base-10 logarithmic y axis.
    pub fn log_y(mut self) -> Self {
        self.y_scale = Scale::Log10;
        self
    }

    /// Uses a base-10 logarithmic x axis.
    pub fn log_x(mut self) -> Self {
        self.x_scale = Scale::Log10;
        self
    }

    /// Adds a series (drawn on top of those added before).
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// The colour series `i` is drawn with.
    fn color_of(&self, i: usize) -> [u8; 3] {
        self.series[i].color.unwrap_or(PALETTE[i % PALETTE.len()])
    }

    /// Transformed-space `(min, max)` of the plottable x and y values.
    fn data_bounds(&self) -> Result<[(f64, f64); 2], PlotError> {
        let mut xb = (f64::INFINITY, f64::NEG_INFINITY);
        let mut yb = xb;
        for s in &self.series {
            for &(x, y) in &s.points {
                if let (Some(tx), Some(ty)) =
                    (transform(self.x_scale, x), transform(self.y_scale, y))
                {
                    xb = (xb.0.min(tx), xb.1.max(tx));
                    yb = (yb.0.min(ty), yb.1.max(ty));
                }
            }
        }
        if xb.0 > xb.1 {
            return Err(PlotError::NoData {
                title: self.title.clone(),
            });
        }
        Ok([xb, yb])
    }

    /// Computes the layout of a `width` x `height` rendering.
    pub(crate) fn layout(&self, width: u32, height: u32) -> Result<Layout, PlotError> {
        let [(xmin, xmax), (ymin, ymax)] = self.data_bounds()?;
        let (xlo, xhi) = padded_range(self.x_scale, xmin, xmax, X_MARGIN);
        let (ylo, yhi) = padded_range(self.y_scale, ymin, ymax, Y_MARGIN);
        let x_ticks = ticks(self.x_scale, xlo, xhi);
        let y_ticks = ticks(self.y_scale, ylo, yhi);

        let s = text_scale(width, height);
        let si = i64::from(s);
        let pad = 5 * si;
        let gap = 3 * si;
        let tick_len = 2 * si + 2;
        let (w, h) = (i64::from(width), i64::from(height));

        let mut top = pad;
        if !self.title.is_empty() {
            top += text_height(s) + gap;
        }
        // The topmost y tick label is centred on the box edge.
        top = top.max(pad + cap_height(s) / 2 + 1);

        let mut bottom = pad + tick_len + gap + cap_height(s);
        if !self.x_label.is_empty() {
            bottom += 2 * gap + text_height(s);
        }

        let widest_y = y_ticks
            .major
            .iter()
            .map(|(_, l)| text_width(l, s))
            .max()
            .unwrap_or(0);
        let mut left = pad + widest_y + gap + tick_len;
        if !self.y_label.is_empty() {
            left += text_height(s) + 2 * gap;
        }
        // The rightmost x tick label may sit on the box edge, centred.
        let last_x = x_ticks
            .major
            .last()
            .map(|(_, l)| text_width(l, s))
            .unwrap_or(0);
        let right = pad + last_x / 2;

        let plot = Rect {
            x0: left,
            y0: top,
            x1: w - right,
            y1: h - bottom,
        };
        if plot.width() < 16 || plot.height() < 16 {
            return Err(PlotError::TooSmall { width, height });
        }
        let x = Axis {
            scale: self.x_scale,
            lo: xlo,
            hi: xhi,
            pix_lo: plot.x0 as f64 + 0.5,
            pix_hi: plot.x1 as f64 - 0.5,
        };
        let y = Axis {
            scale: self.y_scale,
            lo: ylo,
            hi: yhi,
            pix_lo: plot.y1 as f64 - 0.5,
            pix_hi: plot.y0 as f64 + 0.5,
        };
        Ok(Layout {
            plot,
            x,
            y,
            x_ticks,
            y_ticks,
            s,
            pad,
            gap,
            tick_len,
        })
    }

    /// Renders the chart into a new `width` x `height` image.
    ///
    /// Fails with [`PlotError::NoData`] when no point of any series can be
    /// shown, and [`PlotError::TooSmall`] when the image leaves no room for
    /// the plot area.
    pub fn render(&self, width: u32, height: u32) -> Result<RgbImage, PlotError> {
        let layout = self.layout(width, height)?;
        let mut img = RgbImage::from_pixel(width, height, Rgb(WHITE));
        self.draw(&mut Canvas { img: &mut img }, &layout);
        Ok(img)
    }

    /// Renders the chart and writes it as a PNG file, atomically (a
    /// temporary file in the same directory is renamed over `path`).
    pub fn save_png(
        &self,
        path: impl AsRef<Path>,
        width: u32,
        height: u32,
    ) -> Result<(), PlotError> {
        crate::write_png(&self.render(width, height)?, path.as_ref())
    }

    fn draw(&self, c: &mut Canvas<'_>, l: &Layout) {
        let inner = l.inner();
        self.draw_grid(c, l, inner);
        let coverage = self.draw_series(c, l, inner);
        self.draw_axes(c, l);
        self.draw_labels(c, l);
        if self.series.len() >= 2 {
            self.draw_legend(c, l, inner, &coverage);
        }
    }

    fn draw_grid(&self, c: &mut Canvas<'_>, l: &Layout, inner: Rect) {
        for &(v, _) in &l.x_ticks.major {
            if let Some(px) = l.x.map(v) {
                let x = px.floor() as i64;
                if x > inner.x0 && x < inner.x1 - 1 {
                    c.fill(
                        Rect {
                            x0: x,
                            x1: x + 1,
                            ..inner
                        },
                        GRID,
                    );
                }
            }
        }
        for &(v, _) in &l.y_ticks.major {
            if let Some(py) = l.y.map(v) {
                let y = py.floor() as i64;
                if y > inner.y0 && y < inner.y1 - 1 {
                    c.fill(
                        Rect {
                            y0: y,
                            y1: y + 1,
                            ..inner
                        },
                        GRID,
                    );
                }
            }
        }
    }

    /// Draws every series; returns their coverage maps for legend placement.
    fn draw_series(&self, c: &mut Canvas<'_>, l: &Layout, inner: Rect) -> Vec<Coverage> {
        let mut out = Vec::with_capacity(self.series.len());
        for (i, s) in self.series.iter().enumerate() {
            let mut cov = Coverage::new(inner);
            let pixels: Vec<Option<(f64, f64)>> = s
                .points
                .iter()
                .map(|&(x, y)| Some((l.x.map(x)?, l.y.map(y)?)))
                .collect();
            for (j, p) in pixels.iter().enumerate() {
                let Some(p) = *p else { continue };
                match pixels.get(j + 1).copied().flatten() {
                    Some(q) => cov.segment(p, q, LINE_WIDTH),
                    // An isolated point still shows up as a dot.
                    None if j == 0 || pixels[j - 1].is_none() => {
                        cov.segment(p, p, LINE_WIDTH + 1.0)
                    }
                    None => {}
                }
            }
            cov.composite(c, self.color_of(i));
            out.push(cov);
        }
        out
    }

    fn draw_axes(&self, c: &mut Canvas<'_>, l: &Layout) {
        let p = l.plot;
        c.outline(p, AXIS);
        let minor_len = (l.tick_len / 2).max(2);
        let x_marks = l.x_ticks.major.iter().map(|(v, _)| (*v, l.tick_len));
        let x_minor = l.x_ticks.minor.iter().map(|v| (*v, minor_len));
        for (v, len) in x_marks.chain(x_minor) {
            if let Some(px) = l.x.map(v) {
                let x = px.floor() as i64;
                c.fill(
                    Rect {
                        x0: x,
                        x1: x + 1,
                        y0: p.y1,
                        y1: p.y1 + len,
                    },
                    AXIS,
                );
            }
        }
        let y_marks = l.y_ticks.major.iter().map(|(v, _)| (*v, l.tick_len));
        let y_minor = l.y_ticks.minor.iter().map(|v| (*v, minor_len));
        for (v, len) in y_marks.chain(y_minor) {
            if let Some(py) = l.y.map(v) {
                let y = py.floor() as i64;
                c.fill(
                    Rect {
                        x0: p.x0 - len,
                        x1: p.x0,
                        y0: y,
                        y1: y + 1,
                    },
                    AXIS,
                );
            }
        }
    }

    fn draw_labels(&self, c: &mut Canvas<'_>, l: &Layout) {
        let (s, p) = (l.s, l.plot);
        let si = i64::from(s);
        let img_w = i64::from(c.img.width());

        // x tick labels, thinned to every k-th when neighbours would touch.
        let xs: Vec<(f64, i64, &str)> = l
            .x_ticks
            .major
            .iter()
            .filter_map(|(v, t)| Some((l.x.map(*v)?, text_width(t, s), t.as_str())))
            .collect();
        let min_gap = 3 * i64::from(crate::font::ADVANCE) * si / 2;
        let stride = (1..=xs.len().max(1))
            .find(|&k| {
                xs.iter()
                    .step_by(k)
                    .zip(xs.iter().step_by(k).skip(1))
                    .all(|((a, wa, _), (b, wb, _))| (b - a).abs() as i64 - (wa + wb) / 2 >= min_gap)
            })
            .unwrap_or(1);
        let label_y = p.y1 + l.tick_len + l.gap;
        for &(px, tw, t) in xs.iter().step_by(stride) {
            let x = (px.floor() as i64 - tw / 2).clamp(0, (img_w - tw).max(0));
            c.text(x, label_y, t, s, TEXT);
        }

        // y tick labels, right-aligned, centred on their ticks.
        let ys: Vec<(f64, &str)> = l
            .y_ticks
            .major
            .iter()
            .filter_map(|(v, t)| Some((l.y.map(*v)?, t.as_str())))
            .collect();
        let need = cap_height(s) + 2 * si;
        let stride = (1..=ys.len().max(1))
            .find(|&k| {
                ys.iter()
                    .step_by(k)
                    .zip(ys.iter().step_by(k).skip(1))
                    .all(|((a, _), (b, _))| (b - a).abs() as i64 >= need)
            })
            .unwrap_or(1);
        let right = p.x0 - l.tick_len - l.gap;
        for &(py, t) in ys.iter().step_by(stride) {
            let y = py.floor() as i64 - cap_height(s) / 2;
            c.text(right - text_width(t, s), y, t, s, TEXT);
        }

        // Title: bold (double-struck), centred over the plot box.
        if !self.title.is_empty() {
            let t = fit_text(&self.title, s, img_w - 2 * l.pad - 1);
            let tw = text_width(&t, s) + 1;
            let x = ((p.x0 + p.x1 - tw) / 2).clamp(l.pad, (img_w - l.pad - tw).max(0));
            c.text(x, l.pad, &t, s, TEXT);
            c.text(x + 1, l.pad, &t, s, TEXT);
        }

        // x label, centred under the tick labels.
        if !self.x_label.is_empty() {
            let t = fit_text(&self.x_label, s, img_w - 2 * l.pad);
            let tw = text_width(&t, s);
            let x = ((p.x0 + p.x1 - tw) / 2).clamp(l.pad, (img_w - l.pad - tw).max(0));
            let y = label_y + cap_height(s) + 2 * l.gap;
            c.text(x, y, &t, s, TEXT);
        }

        // y label, rotated, centred beside the box.
        if !self.y_label.is_empty() {
            let img_h = i64::from(c.img.height());
            let t = fit_text(&self.y_label, s, img_h - 2 * l.pad);
            let tw = text_width(&t, s);
            let bottom = ((p.y0 + p.y1 + tw) / 2).clamp(l.pad + tw, img_h - l.pad);
            c.text_up(l.pad, bottom, &t, s, TEXT);
        }
    }

    fn draw_legend(&self, c: &mut Canvas<'_>, l: &Layout, inner: Rect, coverage: &[Coverage]) {
        let s = l.s;
        let si = i64::from(s);
        let box_pad = 3 * si;
        let sample_w = 10 * si + 4;
        let row_h = text_height(s) + si;
        let inset = 4 * si;
        let max_w = inner.width() - 2 * inset;
        let max_rows = ((inner.height() - 2 * inset - 2 * box_pad) / row_h).max(0) as usize;
        let name_room = max_w - 2 * box_pad - sample_w - l.gap;
        if name_room < text_width("W..", s) || max_rows == 0 {
            return;
        }
        let names: Vec<String> = self
            .series
            .iter()
            .take(max_rows)
            .map(|se| fit_text(&se.name, s, name_room))
            .collect();
        let widest = names.iter().map(|n| text_width(n, s)).max().unwrap_or(0);
        let w = 2 * box_pad + sample_w + l.gap + widest;
        let h = 2 * box_pad + names.len() as i64 * row_h - si;

        let candidates = [
            (inner.x1 - inset - w, inner.y0 + inset),
            (inner.x0 + inset, inner.y0 + inset),
            (inner.x1 - inset - w, inner.y1 - inset - h),
            (inner.x0 + inset, inner.y1 - inset - h),
        ];
        let rect_at = |(x, y): (i64, i64)| Rect {
            x0: x,
            y0: y,
            x1: x + w,
            y1: y + h,
        };
        let ink = |r: Rect| coverage.iter().map(|cv| cv.ink_in(r)).sum::<f64>();
        let mut best = rect_at(candidates[0]);
        let mut best_ink = ink(best);
        for &cand in &candidates[1..] {
            let r = rect_at(cand);
            let k = ink(r);
            if k < best_ink {
                best = r;
                best_ink = k;
            }
        }

        c.fill(best, WHITE);
        c.outline(best, LEGEND_BORDER);
        for (i, name) in names.iter().enumerate() {
            let ty = best.y0 + box_pad + i as i64 * row_h;
            let mid = ty + cap_height(s) / 2;
            let sx = best.x0 + box_pad;
            let line = Rect {
                x0: sx,
                x1: sx + sample_w,
                y0: mid - 1,
                y1: mid + 1,
            };
            c.fill(line, self.color_of(i));
            c.text(sx + sample_w + l.gap, ty, name, s, TEXT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizontal_line_lands_on_its_row() {
        let color = [200, 30, 90];
        let chart = Chart::new("flat").series(
            Series::new("c", (0..=10).map(|i| (i as f64, 3.0)).collect()).with_color(color),
        );
        let (w, h) = (400, 300);
        let layout = chart.layout(w, h).unwrap();
        let row = layout.y.map(3.0).unwrap();
        let inner = layout.inner();
        assert!(row > inner.y0 as f64 && row < inner.y1 as f64);
        // Larger values sit higher up (smaller row numbers).
        assert!(layout.y.map(3.1).unwrap() < row && layout.y.map(2.9).unwrap() > row);
        let img = chart.render(w, h).unwrap();
        let mut on_row = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == color {
                let d = (y as f64 + 0.5 - row).abs();
                assert!(d <= 1.0, "colour pixel at ({x},{y}), line at {row}");
                on_row += 1;
            } else if (y as f64 + 0.5 - row).abs() > 3.0 {
                // Nothing even tinted with the line colour far away.
                assert!(p.0[0] <= 230 || p.0[1] > 200, "tinted pixel at ({x},{y})");
            }
        }
        // Two fully covered rows across (most of) the plot width.
        assert!(on_row as i64 >= inner.width(), "only {on_row} pixels");
    }

    #[test]
    fn layout_boxes_are_ordered() {
        let chart = Chart::new("t")
            .x_label("x")
            .y_label("y")
            .series(Series::from_ys("a", &[1.0, 2.0, 3.0]));
        let l = chart.layout(640, 420).unwrap();
        assert!(l.plot.x0 > l.pad && l.plot.x1 < 640);
        assert!(l.plot.y0 > l.pad && l.plot.y1 < 420);
        assert_eq!(l.x.map(0.0).map(|v| v > l.plot.x0 as f64), Some(true));
        assert!(l.x.map(2.0).unwrap() < l.plot.x1 as f64);
    }

    #[test]
    fn legend_avoids_the_data() {
        // Data in the top-right corner only: the legend must go elsewhere.
        let chart = Chart::new("")
            .series(Series::new(
                "a",
                vec![(0.0, 0.0), (1.0, 0.0), (9.0, 9.0), (10.0, 10.0)],
            ))
            .series(Series::new("b", vec![(0.0, 0.0), (10.0, 10.0)]));
        let l = chart.layout(400, 300).unwrap();
        let img = chart.render(400, 300).unwrap();
        let inner = l.inner();
        // Top-right corner pixel just inside the inset is data or white,
        // never legend border.
        let border_hits = (inner.y0..inner.y0 + 40)
            .flat_map(|y| (inner.x1 - 60..inner.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x as u32, y as u32).0 == LEGEND_BORDER)
            .count();
        assert_eq!(border_hits, 0);
        let total_border = img.pixels().filter(|p| p.0 == LEGEND_BORDER).count();
        assert!(total_border > 20, "legend not drawn");
    }
}
