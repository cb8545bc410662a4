//! One module per subcommand.

pub mod bench;
pub mod config;
pub mod ensemble;
pub mod eval;
pub mod export;
pub mod model;
pub mod parity;
pub mod sample;
pub mod schedule;
pub mod sweep;
pub mod train;

/// A number flag that must be a finite number (`NaN` and `inf` are rejected by name, as clap
/// would otherwise let them through `f64`'s parser).
pub fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

/// [`finite`], as an `f32` (label vectors).
pub fn finite_f32(s: &str) -> Result<f32, String> {
    finite(s).map(|x| x as f32)
}
