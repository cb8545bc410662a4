//! Axis ranges, value-to-pixel mapping, tick placement and tick labels.

use crate::Scale;

/// Most major ticks an axis asks for (label thinning may show fewer labels).
pub(crate) const MAX_TICKS: usize = 8;

/// A data axis: the visible range in transformed space (log10 of the value
/// for [`Scale::Log10`]) mapped linearly onto a pixel interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Axis {
    pub scale: Scale,
    /// Lower end of the visible range, in transformed space.
    pub lo: f64,
    /// Upper end of the visible range, in transformed space.
    pub hi: f64,
    /// Pixel coordinate of `lo` (may be greater than `pix_hi` for y axes).
    pub pix_lo: f64,
    /// Pixel coordinate of `hi`.
    pub pix_hi: f64,
}

impl Axis {
    /// Pixel coordinate of data value `v`, or `None` when `v` cannot be
    /// shown on this scale (non-finite, or non-positive on a log axis).
    pub fn map(&self, v: f64) -> Option<f64> {
        let t = transform(self.scale, v)?;
        let f = (t - self.lo) / (self.hi - self.lo);
        Some(self.pix_lo + f * (self.pix_hi - self.pix_lo))
    }
}

/// `v` in the axis' linear working space: itself, or its log10.
pub(crate) fn transform(scale: Scale, v: f64) -> Option<f64> {
    match scale {
        Scale::Linear if v.is_finite() => Some(v),
        Scale::Log10 if v.is_finite() && v > 0.0 => Some(v.log10()),
        _ => None,
    }
}

/// Visible range in transformed space for data spanning `min..=max`
/// (already transformed), with a margin of `margin` times the span on both
/// sides. A zero span is widened so that a constant series still renders.
pub(crate) fn padded_range(scale: Scale, min: f64, max: f64, margin: f64) -> (f64, f64) {
    let span = max - min;
    if span > 0.0 && span.is_finite() {
        return (min - margin * span, max + margin * span);
    }
    match scale {
        // Half a decade either way.
        Scale::Log10 => (min - 0.5, max + 0.5),
        Scale::Linear => {
            let half = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
            (min - half, max + half)
        }
    }
}

/// Ticks for one axis: major positions with labels, plus unlabelled minor
/// positions (log axes only). All values are data values, not transformed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticks {
    pub major: Vec<(f64, String)>,
    pub minor: Vec<f64>,
}

/// Ticks for the visible transformed range `lo..=hi`.
pub(crate) fn ticks(scale: Scale, lo: f64, hi: f64) -> Ticks {
    match scale {
        Scale::Linear => {
            let (values, step) = linear_ticks(lo, hi, MAX_TICKS);
            let labels = format_linear(&values, step);
            Ticks {
                major: values.into_iter().zip(labels).collect(),
                minor: Vec::new(),
            }
        }
        Scale::Log10 => log_ticks(lo, hi),
    }
}

/// `m * 10^e` computed so that small decimal steps come out correctly
/// rounded (`3 * 0.1` gives `0.3`, not `0.30000000000000004`).
fn scaled(m: i64, e: i32) -> f64 {
    if e < -300 {
        return m as f64 * 10f64.powi(e);
    }
    if e >= 0 {
        m as f64 * 10f64.powi(e)
    } else {
        m as f64 / 10f64.powi(-e)
    }
}

/// `10^e`, correctly rounded for moderate `e`.
fn pow10(e: i32) -> f64 {
    scaled(1, e)
}

/// "Nice" linear ticks inside `lo..=hi`: the smallest step of the form
/// 1, 2 or 5 times a power of ten that yields at most `max_ticks` ticks.
/// Returns the tick values and the step.
pub(crate) fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return (vec![lo], 1.0);
    }
    let max_ticks = max_ticks.max(2);
    let base = (span / max_ticks as f64).log10().floor() as i32 - 1;
    for e in base..base + 4 {
        for m in [1i64, 2, 5] {
            let step = scaled(m, e);
            let first = (lo / step - 1e-9).ceil();
            let last = (hi / step + 1e-9).floor();
            if last - first + 1.0 <= max_ticks as f64 {
                let (first, last) = (first as i64, last as i64);
                let values = (first..=last)
                    .map(|k| if k == 0 { 0.0 } else { scaled(k * m, e) })
                    .collect();
                return (values, step);
            }
        }
    }
    // Unreachable for finite spans; keep a sane answer anyway.
    (vec![lo, hi], span)
}

/// Decade ticks for a log axis over transformed range `lo..=hi`, thinned to
/// every 2nd, 3rd, ... decade for wide ranges. Falls back to 1-2-5 or
/// linear ticks when the range holds fewer than two decades.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Ticks {
    let first = (lo - 1e-9).ceil() as i64;
    let last = (hi + 1e-9).floor() as i64;
    let decades = last - first + 1;
    if decades >= 2 {
        let mut stride = 1;
        while (decades + stride - 1) / stride > MAX_TICKS as i64 {
            stride += 1;
        }
        // Align on multiples of the stride so 1 (10^0) is a tick when shown.
        let start = first + (-first).rem_euclid(stride);
        let major: Vec<(f64, String)> = (start..=last)
            .step_by(stride as usize)
            .map(|e| (pow10(e as i32), format_decade(e)))
            .collect();
        let mut minor = Vec::new();
        if stride == 1 && decades <= 7 {
            for e in first - 1..=last {
                for m in 2..=9 {
                    let v = scaled(m, e as i32);
                    let t = v.log10();
                    if t >= lo && t <= hi {
                        minor.push(v);
                    }
                }
            }
        }
        return Ticks { major, minor };
    }
    // Narrow range: try mantissas 1, 2, 5, then every integer mantissa,
    // then plain nice ticks in value space; keep the first set with enough
    // ticks, else the largest.
    let (vlo, vhi) = (10f64.powf(lo), 10f64.powf(hi));
    let mut best: Vec<(f64, String)> = Vec::new();
    for mantissas in [&[1i64, 2, 5][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9][..]] {
        let mut values = Vec::new();
        for e in (lo.floor() as i32 - 1)..=(hi.ceil() as i32) {
            for &m in mantissas {
                let v = scaled(m, e);
                if v >= vlo * (1.0 - 1e-12) && v <= vhi * (1.0 + 1e-12) {
                    values.push(v);
                }
            }
        }
        if values.len() <= MAX_TICKS && values.len() > best.len() {
            best = values.iter().map(|&v| (v, format_compact(v))).collect();
        }
        if best.len() >= 3 {
            return Ticks {
                major: best,
                minor: Vec::new(),
            };
        }
    }
    let (values, step) = linear_ticks(vlo, vhi, MAX_TICKS);
    let values: Vec<f64> = values.into_iter().filter(|&v| v > 0.0).collect();
    if values.len() > best.len() {
        let labels = format_linear(&values, step);
        best = values.into_iter().zip(labels).collect();
    }
    Ticks {
        major: best,
        minor: Vec::new(),
    }
}

/// Label for `10^e`: `1` or `1e<e>`.
pub(crate) fn format_decade(e: i64) -> String {
    if e == 0 { "1".into() } else { format!("1e{e}") }
}

/// `floor(log10(|v|))`, robust to rounding just below a power of ten.
fn exponent(v: f64) -> i32 {
    let mut e = v.abs().log10().floor() as i32;
    if v.abs() >= pow10(e + 1) {
        e += 1;
    } else if v.abs() < pow10(e) {
        e -= 1;
    }
    e
}

/// Removes trailing zeros after a decimal point, and `-0`.
fn trim_number(s: &str) -> String {
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s.into() }
}

/// `v` in fixed notation with `decimals` digits, trailing zeros trimmed.
fn fixed(v: f64, decimals: usize) -> String {
    trim_number(&format!("{v:.decimals$}"))
}

/// `v` as `<mantissa>e<exp>` with `decimals` mantissa digits, trimmed.
fn sci(v: f64, decimals: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mut e = exponent(v);
    let mut m = fixed(v / pow10(e), decimals);
    if m.trim_start_matches('-').starts_with("10") {
        e += 1;
        m = fixed(v / pow10(e), decimals);
    }
    if e == 0 { m } else { format!("{m}e{e}") }
}

/// Labels for evenly spaced linear ticks: fixed notation with as many
/// decimals as the step needs, unless scientific notation is clearly
/// shorter (very large or very small values).
pub(crate) fn format_linear(values: &[f64], step: f64) -> Vec<String> {
    if values.is_empty() {
        return Vec::new();
    }
    let step_exp = exponent(step);
    let decimals = (-step_exp).max(0) as usize;
    let fixed_labels: Vec<String> = values.iter().map(|&v| fixed(v, decimals)).collect();
    let sci_labels: Vec<String> = values
        .iter()
        .map(|&v| {
            if v == 0.0 {
                "0".into()
            } else {
                sci(v, (exponent(v) - step_exp).max(0) as usize)
            }
        })
        .collect();
    let longest = |ls: &[String]| ls.iter().map(String::len).max().unwrap_or(0);
    let (f, s) = (longest(&fixed_labels), longest(&sci_labels));
    if f > 6 || f >= s + 2 {
        sci_labels
    } else {
        fixed_labels
    }
}

/// Compact stand-alone label for one number: up to 3 significant digits,
/// fixed notation for moderate magnitudes, scientific otherwise
/// (`0`, `250`, `0.5`, `1e-3`, `2.5e6`).
pub(crate) fn format_compact(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            (if v > 0.0 { "inf" } else { "-inf" }).into()
        } else {
            "0".into()
        };
    }
    let e = exponent(v);
    if (-2..5).contains(&e) {
        fixed(v, (2 - e).max(0) as usize)
    } else {
        sci(v, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Ticks) -> Vec<f64> {
        t.major.iter().map(|(v, _)| *v).collect()
    }

    fn labels(t: &Ticks) -> Vec<&str> {
        t.major.iter().map(|(_, l)| l.as_str()).collect()
    }

    #[test]
    fn linear_ticks_0_to_1000() {
        let (v, step) = linear_ticks(0.0, 1000.0, MAX_TICKS);
        assert!(step == 200.0 || step == 250.0, "step {step}");
        assert!((5..=8).contains(&v.len()), "{v:?}");
        assert_eq!(v[0], 0.0);
        assert_eq!(*v.last().unwrap(), 1000.0);
        for w in v.windows(2) {
            assert_eq!(w[1] - w[0], step);
        }
    }

    #[test]
    fn linear_ticks_cover_padded_ranges() {
        for &(lo, hi) in &[
            (-0.05, 1.05),
            (-20.0, 1019.0),
            (-0.0005, 0.0206),
            (3.2, 3.9),
            (-7.0, -2.0),
            (1e6, 5e6),
            (-1e-7, 3e-7),
        ] {
            let (v, step) = linear_ticks(lo, hi, MAX_TICKS);
            assert!((3..=MAX_TICKS).contains(&v.len()), "{lo}..{hi}: {v:?}");
            assert!(v[0] >= lo && v[0] - lo < step, "{lo}..{hi}: {v:?}");
            let last = *v.last().unwrap();
            assert!(last <= hi && hi - last < step, "{lo}..{hi}: {v:?}");
            let mantissa = step / pow10(exponent(step));
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9),
                "step {step}"
            );
        }
    }

    #[test]
    fn log_ticks_every_decade() {
        let t = log_ticks(-4.0, 2.0);
        assert_eq!(values(&t), vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]);
        assert_eq!(
            labels(&t),
            ["1e-4", "1e-3", "1e-2", "1e-1", "1", "1e1", "1e2"]
        );
        assert!(t.minor.contains(&2.0) && t.minor.contains(&5e-4));
    }

    #[test]
    fn log_ticks_thin_wide_ranges() {
        let t = log_ticks(-8.3, 4.2);
        assert!(t.major.len() <= MAX_TICKS && t.major.len() >= 4);
        assert!(values(&t).contains(&1.0));
        assert!(labels(&t).contains(&"1e-8"));
        assert!(labels(&t).contains(&"1e4"));
        assert!(t.minor.is_empty());
    }

    #[test]
    fn log_ticks_narrow_range_fallback() {
        // 0.3..3 holds one power of ten: 1-2-5 mantissas suffice.
        let t = log_ticks(0.3f64.log10(), 3f64.log10());
        assert_eq!(labels(&t), ["0.5", "1", "2"]);
        // 2..8: 2 and 5 alone are too few, so every integer.
        let t = log_ticks(2f64.log10(), 8f64.log10());
        assert_eq!(labels(&t), ["2", "3", "4", "5", "6", "7", "8"]);
        // 3..4: needs plain linear ticks.
        let t = log_ticks(3f64.log10(), 4f64.log10());
        assert_eq!(labels(&t), ["3", "3.2", "3.4", "3.6", "3.8", "4"]);
    }

    #[test]
    fn compact_linear_labels() {
        let (v, step) = linear_ticks(0.0, 1000.0, MAX_TICKS);
        assert_eq!(
            format_linear(&v, step),
            ["0", "200", "400", "600", "800", "1000"]
        );
        let (v, step) = linear_ticks(-0.05, 1.05, MAX_TICKS);
        assert_eq!(
            format_linear(&v, step),
            ["0", "0.2", "0.4", "0.6", "0.8", "1"]
        );
        let (v, step) = linear_ticks(0.0, 0.02, MAX_TICKS);
        assert_eq!(
            format_linear(&v, step),
            ["0", "0.005", "0.01", "0.015", "0.02"]
        );
        let (v, step) = linear_ticks(0.0, 4e-4, MAX_TICKS);
        assert_eq!(
            format_linear(&v, step),
            ["0", "1e-4", "2e-4", "3e-4", "4e-4"]
        );
        let (v, step) = linear_ticks(0.0, 3e6, MAX_TICKS);
        assert_eq!(
            format_linear(&v, step),
            ["0", "5e5", "1e6", "1.5e6", "2e6", "2.5e6", "3e6"]
        );
        let (v, step) = linear_ticks(-1.0, 1.0, MAX_TICKS);
        assert_eq!(format_linear(&v, step), ["-1", "-0.5", "0", "0.5", "1"]);
    }

    #[test]
    fn compact_single_numbers() {
        assert_eq!(format_compact(0.0), "0");
        assert_eq!(format_compact(250.0), "250");
        assert_eq!(format_compact(0.5), "0.5");
        assert_eq!(format_compact(1e-3), "1e-3");
        assert_eq!(format_compact(0.0123), "0.0123");
        assert_eq!(format_compact(2.5e6), "2.5e6");
        assert_eq!(format_compact(-9.999e-5), "-1e-4");
        assert_eq!(format_decade(0), "1");
        assert_eq!(format_decade(2), "1e2");
        assert_eq!(format_decade(-4), "1e-4");
    }

    #[test]
    fn mapping_is_monotone_and_hits_edges() {
        for scale in [Scale::Linear, Scale::Log10] {
            let (lo, hi) = match scale {
                Scale::Linear => (-3.0, 7.0),
                Scale::Log10 => (-4.0, 2.0),
            };
            // A y axis: larger values go up (smaller pixel rows).
            let axis = Axis {
                scale,
                lo,
                hi,
                pix_lo: 400.5,
                pix_hi: 40.5,
            };
            let inv = |t: f64| match scale {
                Scale::Linear => t,
                Scale::Log10 => 10f64.powf(t),
            };
            assert!((axis.map(inv(lo)).unwrap() - 400.5).abs() < 1e-9);
            assert!((axis.map(inv(hi)).unwrap() - 40.5).abs() < 1e-9);
            let mut prev = f64::INFINITY;
            for i in 0..=100 {
                let p = axis.map(inv(lo + (hi - lo) * i as f64 / 100.0)).unwrap();
                assert!(p < prev, "{scale:?} not monotone at {i}");
                prev = p;
            }
        }
        let log = Axis {
            scale: Scale::Log10,
            lo: 0.0,
            hi: 1.0,
            pix_lo: 0.0,
            pix_hi: 100.0,
        };
        assert_eq!(log.map(0.0), None);
        assert_eq!(log.map(-1.0), None);
        assert_eq!(log.map(f64::NAN), None);
    }

    #[test]
    fn padded_range_expands_constants() {
        assert_eq!(padded_range(Scale::Linear, 0.0, 10.0, 0.05), (-0.5, 10.5));
        let (a, b) = padded_range(Scale::Linear, 5.0, 5.0, 0.05);
        assert!(a < 5.0 && b > 5.0);
        let (a, b) = padded_range(Scale::Linear, 0.0, 0.0, 0.05);
        assert!(a < 0.0 && b > 0.0);
        assert_eq!(padded_range(Scale::Log10, -2.0, -2.0, 0.05), (-2.5, -1.5));
    }
}
