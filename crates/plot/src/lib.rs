//! Small, dependency-light line charts rendered to PNG.
//!
//! Used for noise-schedule curves (`difflab schedule --plot`) and sweep
//! plots. Everything is drawn in-process with a built-in bitmap font, so
//! output bytes depend only on the inputs.
//!
//! ```no_run
//! use difflab_plot::{Chart, Figure, Series};
//!
//! let snr: Vec<f64> = (0..1000).map(|t| 1e4 * (-(t as f64) / 60.0).exp()).collect();
//! let chart = Chart::new("SNR")
//!     .x_label("t")
//!     .y_label("SNR")
//!     .log_y()
//!     .series(Series::from_ys("snr", &snr));
//! chart.save_png("snr.png", 640, 420)?;
//!
//! let fig = Figure::new(2).chart(chart.clone()).chart(chart);
//! fig.save_png("both.png")?;
//! # Ok::<(), difflab_plot::PlotError>(())
//! ```
#![forbid(unsafe_code)]

mod canvas;
mod chart;
mod font;
mod ticks;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};

pub use chart::{Chart, PALETTE, Scale, Series};

/// Errors from rendering or saving a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No series of the chart has a point that can be shown (all
    /// non-finite, or non-positive on a log axis, or no points at all).
    #[error("chart {title:?} has no finite points to plot")]
    NoData {
        /// Title of the offending chart.
        title: String,
    },
    /// A [`Figure`] without charts.
    #[error("figure has no charts")]
    EmptyFigure,
    /// The requested image is too small to fit the axes and labels.
    #[error("image size {width}x{height} is too small for a chart")]
    TooSmall {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {error}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        /// (In the message, so not a `source`: it would print twice.)
        error: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Image(#[from] image::ImageError),
}

/// Several charts laid out in a grid of equally sized panels.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Charts in row-major order.
    pub charts: Vec<Chart>,
    /// Panels per row (at least 1 is used; never more than there are charts).
    pub columns: usize,
    /// Width of each panel in pixels.
    pub panel_width: u32,
    /// Height of each panel in pixels.
    pub panel_height: u32,
}

impl Figure {
    /// An empty figure with `columns` panels per row of 640x420 pixels.
    pub fn new(columns: usize) -> Self {
        Figure {
            charts: Vec::new(),
            columns,
            panel_width: 640,
            panel_height: 420,
        }
    }

    /// Adds a chart as the next panel.
    pub fn chart(mut self, chart: Chart) -> Self {
        self.charts.push(chart);
        self
    }

    /// Sets the size of every panel.
    pub fn panel_size(mut self, width: u32, height: u32) -> Self {
        self.panel_width = width;
        self.panel_height = height;
        self
    }

    /// `(columns, rows)` of the grid actually used.
    pub fn grid(&self) -> (usize, usize) {
        let n = self.charts.len();
        let cols = self.columns.clamp(1, n.max(1));
        (cols, n.div_ceil(cols))
    }

    /// Renders all panels into one image of
    /// `columns * panel_width` by `rows * panel_height` pixels; unused
    /// cells of the last row stay white.
    pub fn render(&self) -> Result<RgbImage, PlotError> {
        if self.charts.is_empty() {
            return Err(PlotError::EmptyFigure);
        }
        let (cols, rows) = self.grid();
        let (pw, ph) = (self.panel_width, self.panel_height);
        let mut img = RgbImage::from_pixel(cols as u32 * pw, rows as u32 * ph, Rgb([255; 3]));
        for (i, chart) in self.charts.iter().enumerate() {
            let panel = chart.render(pw, ph)?;
            let (ox, oy) = ((i % cols) as u32 * pw, (i / cols) as u32 * ph);
            for (x, y, p) in panel.enumerate_pixels() {
                img.put_pixel(ox + x, oy + y, *p);
            }
        }
        Ok(img)
    }

    /// Renders the figure and writes it as a PNG file, atomically (a
    /// temporary file in the same directory is renamed over `path`).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        write_png(&self.render()?, path.as_ref())
    }
}

/// Encodes `img` as PNG and writes it to `path` via a temporary file in the
/// same directory followed by a rename, so readers never see a partial file.
pub(crate) fn write_png(img: &RgbImage, path: &Path) -> Result<(), PlotError> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    difflab_files::write_atomic(path, &bytes).map_err(|error| PlotError::Io {
        path: path.to_path_buf(),
        error,
    })
}
