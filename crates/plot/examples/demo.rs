//! Renders a 2x2 demo figure to `/tmp/plot_demo.png` (or the path given as
//! the first argument).

use difflab_plot::{Chart, Figure, Series};

fn main() -> Result<(), difflab_plot::PlotError> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/plot_demo.png".into());
    let steps = 1000;
    let betas: Vec<f64> = (0..steps)
        .map(|t| 1e-4 + (0.02 - 1e-4) * t as f64 / (steps - 1) as f64)
        .collect();
    let mut alpha_bar = Vec::with_capacity(steps);
    let mut acc = 1.0;
    for b in &betas {
        acc *= 1.0 - b;
        alpha_bar.push(acc);
    }
    let cosine: Vec<f64> = (0..steps)
        .map(|t| {
            let f = |t: f64| {
                ((t / steps as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            f(t as f64) / f(0.0)
        })
        .collect();
    // SNR spanning roughly 1e-8..1e4.
    let snr: Vec<f64> = (0..steps)
        .map(|t| 10f64.powf(4.0 - 12.0 * t as f64 / (steps - 1) as f64))
        .collect();

    let linear = Chart::new("beta_t (linear schedule)")
        .x_label("timestep t")
        .y_label("beta")
        .series(Series::from_ys("beta", &betas));
    let log = Chart::new("SNR(t)")
        .x_label("timestep t")
        .y_label("SNR")
        .log_y()
        .series(Series::from_ys("snr", &snr));
    let overlay = Chart::new("alpha_bar: linear vs cosine")
        .x_label("timestep t")
        .y_label("alpha_bar")
        .series(Series::from_ys("linear", &alpha_bar))
        .series(Series::from_ys("cosine", &cosine));
    let sweep_steps: [f64; 7] = [10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    let mut sweep = Chart::new("FID vs sampling steps (with a NaN gap)")
        .x_label("steps (log)")
        .log_x()
        .y_label("FID");
    for (k, name) in ["ddim", "ddpm", "ddim eta=0.5"].iter().enumerate() {
        let pts = sweep_steps
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let y = if k == 1 && i == 3 {
                    f64::NAN
                } else {
                    20.0 + 150.0 / (s / 10.0).powf(0.7 + 0.1 * k as f64) + 2.0 * k as f64
                };
                (s, y)
            })
            .collect();
        sweep = sweep.series(Series::new(*name, pts));
    }

    Figure::new(2)
        .chart(linear)
        .chart(log)
        .chart(overlay)
        .chart(sweep)
        .save_png(&path)?;
    println!("wrote {path}");
    Ok(())
}
