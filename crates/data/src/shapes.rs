//! `kind: shapes`: procedural images, so the quickstart trains with nothing downloaded. Each
//! image is one circle, square or triangle in one of eight named colours, at a random size,
//! position and rotation, on a plain or linear-gradient gray background, anti-aliased with
//! 4×4 supersampling. Everything is drawn from `(seed, index)`, at any resolution.
//!
//! Backgrounds are gray tones from a dark range (0–0.12) or a light range (0.75–1), re-drawn
//! until both gradient ends differ from the shape colour's luma by at least 0.25, so the shape
//! stays visible in `channels: 1` too. Shapes fit inside the image with a margin; their
//! circumradius is 22–40 % of the side (circles use 0.8 × that as radius, for similar areas).
//!
//! Labels: `class` = shape index ([`SHAPE_NAMES`]); `multi_hot` = shape one-hot (3) followed by
//! colour one-hot (8, [`SHAPE_COLORS`]).

use std::f64::consts::TAU;

use super::rng::{Stream, below, keyed_rng, uniform};
use super::transform::{luma, to_model_range};
use super::{DataConfig, DataError, Dataset, Example, LabelMode, limited};

/// Shape names by class index.
pub const SHAPE_NAMES: [&str; 3] = ["circle", "square", "triangle"];

/// The named colours (linear-in-file RGB in [0, 1]), by colour index.
pub const SHAPE_COLORS: [(&str, [f32; 3]); 8] = [
    ("red", [0.90, 0.10, 0.10]),
    ("orange", [1.00, 0.55, 0.00]),
    ("yellow", [1.00, 0.90, 0.10]),
    ("green", [0.10, 0.70, 0.20]),
    ("cyan", [0.00, 0.80, 0.90]),
    ("blue", [0.15, 0.25, 0.95]),
    ("purple", [0.55, 0.15, 0.75]),
    ("pink", [1.00, 0.45, 0.75]),
];

const SUPERSAMPLE: usize = 4;
const MIN_LUMA_CONTRAST: f32 = 0.25;

/// One rendered image of the shapes dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedShape {
    /// Index into [`SHAPE_NAMES`].
    pub shape: usize,
    /// Index into [`SHAPE_COLORS`].
    pub color: usize,
    /// `[channels, resolution, resolution]` values in [−1, 1].
    pub data: Vec<f32>,
    /// Per pixel (`resolution²`, row-major): the fraction covered by the shape, in [0, 1].
    pub coverage: Vec<f32>,
}

/// The geometry of one shape, in unit coordinates (x right, y down, image = [0, 1]²).
struct Geometry {
    shape: usize,
    centre: (f64, f64),
    radius: f64,
    angle: f64,
}

impl Geometry {
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        match self.shape {
            0 => {
                let r = 0.8 * self.radius;
                dx * dx + dy * dy <= r * r
            }
            1 => {
                let (s, c) = self.angle.sin_cos();
                let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
                let half = self.radius / std::f64::consts::SQRT_2;
                u.abs() <= half && v.abs() <= half
            }
            _ => {
                let vertex = |k: f64| {
                    let a = self.angle + k * TAU / 3.0;
                    (self.radius * a.cos(), self.radius * a.sin())
                };
                let v = [vertex(0.0), vertex(1.0), vertex(2.0)];
                let edge = |a: (f64, f64), b: (f64, f64)| {
                    (b.0 - a.0) * (dy - a.1) - (b.1 - a.1) * (dx - a.0)
                };
                let e = [edge(v[0], v[1]), edge(v[1], v[2]), edge(v[2], v[0])];
                e.iter().all(|&t| t >= 0.0) || e.iter().all(|&t| t <= 0.0)
            }
        }
    }
}

/// Render example `index` of the shapes dataset for `seed` (deterministic).
pub fn render_shape(seed: u64, index: usize, resolution: usize, channels: usize) -> RenderedShape {
    let mut rng = keyed_rng(Stream::Shapes, seed, index as u64, 0);
    let shape = below(&mut rng, 3) as usize;
    let color = below(&mut rng, SHAPE_COLORS.len() as u64) as usize;
    let fg = SHAPE_COLORS[color].1;
    let radius = uniform(&mut rng, 0.22, 0.40);
    let margin = radius + 0.04;
    let centre = (
        uniform(&mut rng, margin, 1.0 - margin),
        uniform(&mut rng, margin, 1.0 - margin),
    );
    let angle = uniform(&mut rng, 0.0, TAU);
    let geometry = Geometry {
        shape,
        centre,
        radius,
        angle,
    };

    // Background: two gray tones (equal for a plain background) and a gradient direction.
    let fg_luma = luma(fg[0], fg[1], fg[2]);
    let gradient = below(&mut rng, 2) == 1;
    let mut tones = (0.0f32, 0.0f32);
    let mut found = false;
    for _ in 0..32 {
        let light = below(&mut rng, 2) == 1;
        let (lo, hi) = if light { (0.75, 1.0) } else { (0.0, 0.12) };
        let a = uniform(&mut rng, lo, hi) as f32;
        let b = if gradient {
            uniform(&mut rng, lo, hi) as f32
        } else {
            a
        };
        if (a - fg_luma).abs() >= MIN_LUMA_CONTRAST && (b - fg_luma).abs() >= MIN_LUMA_CONTRAST {
            tones = (a, b);
            found = true;
            break;
        }
    }
    if !found {
        let t = if fg_luma > 0.5 { 0.0 } else { 1.0 };
        tones = (t, t);
    }
    let direction = uniform(&mut rng, 0.0, TAU);
    let (dir_y, dir_x) = direction.sin_cos();

    let n = resolution;
    let mut coverage = vec![0.0f32; n * n];
    let mut data = vec![0.0f32; channels * n * n];
    let step = 1.0 / (n * SUPERSAMPLE) as f64;
    for py in 0..n {
        for px in 0..n {
            let mut inside = 0usize;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let x = ((px * SUPERSAMPLE + sx) as f64 + 0.5) * step;
                    let y = ((py * SUPERSAMPLE + sy) as f64 + 0.5) * step;
                    inside += geometry.contains(x, y) as usize;
                }
            }
            let cov = inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            let (x, y) = ((px as f64 + 0.5) / n as f64, (py as f64 + 0.5) / n as f64);
            let t = ((x - 0.5) * dir_x + (y - 0.5) * dir_y + 0.5).clamp(0.0, 1.0) as f32;
            let bg = tones.0 + (tones.1 - tones.0) * t;
            let i = py * n + px;
            coverage[i] = cov;
            let mix = |c: f32| bg * (1.0 - cov) + c * cov;
            if channels == 1 {
                data[i] = mix(fg_luma);
            } else {
                for (ch, c) in fg.iter().enumerate() {
                    data[ch * n * n + i] = mix(*c);
                }
            }
        }
    }
    RenderedShape {
        shape,
        color,
        data: to_model_range(data),
        coverage,
    }
}

/// The procedural shapes dataset (rendered on demand; nothing is stored).
#[derive(Debug)]
pub struct ShapesDataset {
    seed: u64,
    len: usize,
    resolution: usize,
    channels: usize,
    hflip: bool,
    label_mode: LabelMode,
}

impl ShapesDataset {
    /// The dataset for a config and experiment seed (images depend on `seed + seed_offset`).
    pub fn new(config: &DataConfig, seed: u64) -> Self {
        Self {
            seed: seed.wrapping_add(config.shapes.seed_offset),
            len: limited(config.shapes.num_images, config.limit),
            resolution: config.resolution as usize,
            channels: config.channels as usize,
            hflip: config.hflip,
            label_mode: config.label_mode,
        }
    }

    /// Example `index` with its shape, colour and coverage mask.
    pub fn render(&self, index: usize) -> RenderedShape {
        render_shape(self.seed, index, self.resolution, self.channels)
    }
}

impl Dataset for ShapesDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        DataError::check_index(index, self.len)?;
        let r = self.render(index);
        let labels = (self.label_mode == LabelMode::MultiHot).then(|| {
            let mut v = vec![0.0; SHAPE_NAMES.len() + SHAPE_COLORS.len()];
            v[r.shape] = 1.0;
            v[SHAPE_NAMES.len() + r.color] = 1.0;
            v
        });
        Ok(Example {
            data: r.data,
            class: (self.label_mode == LabelMode::Class).then_some(r.shape as i64),
            labels,
            cond: None,
        })
    }

    fn shape(&self) -> Vec<i64> {
        let r = self.resolution as i64;
        vec![self.channels as i64, r, r]
    }

    fn num_classes(&self) -> Option<i64> {
        (self.label_mode == LabelMode::Class).then_some(SHAPE_NAMES.len() as i64)
    }

    fn label_dim(&self) -> Option<i64> {
        (self.label_mode == LabelMode::MultiHot)
            .then_some((SHAPE_NAMES.len() + SHAPE_COLORS.len()) as i64)
    }

    fn cond_shape(&self) -> Option<Vec<i64>> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "shapes (seed {}): {} images, {:?}, labels: {}{}",
            self.seed,
            self.len,
            self.shape(),
            self.label_mode.name(),
            if self.hflip { ", hflip" } else { "" }
        )
    }

    fn hflip(&self) -> bool {
        self.hflip
    }

    fn label_names(&self) -> Option<Vec<String>> {
        let shapes = SHAPE_NAMES.iter().map(|s| s.to_string());
        match self.label_mode {
            LabelMode::MultiHot => Some(
                shapes
                    .chain(SHAPE_COLORS.iter().map(|(n, _)| n.to_string()))
                    .collect(),
            ),
            _ => Some(shapes.collect()),
        }
    }
}
