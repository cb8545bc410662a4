//! `difflab schedule`: print or plot a noise schedule and the timesteps a sampler visits.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use difflab_plot::{Chart, Figure, Series};
use difflab_schedulers::{
    BetaScheduleKind, NoiseSchedule, ScheduleConfig, TimestepSpacing, inference_timesteps,
};
use serde_json::json;

/// Arguments of `difflab schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Schedule kind(s): linear, scaled_linear, cosine, sigmoid. Repeat to overlay in --plot.
    #[arg(long, required = true, value_parser = parse_kind)]
    kind: Vec<BetaScheduleKind>,
    /// Training timesteps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// β_1 (linear, scaled_linear, sigmoid); default per kind.
    #[arg(long, value_parser = super::finite)]
    beta_start: Option<f64>,
    /// β_T (linear, scaled_linear, sigmoid); default per kind.
    #[arg(long, value_parser = super::finite)]
    beta_end: Option<f64>,
    /// Offset s of the cosine schedule.
    #[arg(long, default_value_t = 0.008, value_parser = super::finite)]
    cosine_s: f64,
    /// Rescale to zero terminal SNR (Lin et al. 2023).
    #[arg(long)]
    zero_terminal_snr: bool,
    /// Also list the timesteps an N-step sampler visits.
    #[arg(long)]
    inference_steps: Option<usize>,
    /// leading, trailing or linspace.
    #[arg(long, default_value = "leading", value_parser = parse_spacing)]
    spacing: TimestepSpacing,
    /// Added to leading-spaced timesteps.
    #[arg(long, default_value_t = 0)]
    steps_offset: usize,
    /// Print one JSON object: betas, alphas_cumprod (length T) and timesteps (descending).
    #[arg(long)]
    json: bool,
    /// Write a PNG of β, α, ᾱ and SNR against t.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<BetaScheduleKind, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
}

fn parse_spacing(s: &str) -> Result<TimestepSpacing, String> {
    s.parse()
        .map_err(|e: difflab_schedulers::ScheduleError| e.to_string())
}

impl ScheduleArgs {
    fn config(&self, kind: BetaScheduleKind) -> ScheduleConfig {
        ScheduleConfig {
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            cosine_s: self.cosine_s,
            zero_terminal_snr: self.zero_terminal_snr,
            ..ScheduleConfig::new(kind, self.timesteps)
        }
    }

    fn visited(&self) -> Result<Option<Vec<i64>>> {
        self.inference_steps
            .map(|n| inference_timesteps(self.timesteps, n, self.spacing, self.steps_offset))
            .transpose()
            .context("--inference-steps")
    }
}

/// Run the command.
pub fn run(args: &ScheduleArgs) -> Result<()> {
    if !args.json && args.plot.is_none() {
        bail!("nothing to do: pass --json, --plot FILE.png, or both");
    }
    let schedules = args
        .kind
        .iter()
        .map(|&k| {
            args.config(k)
                .build()
                .with_context(|| format!("schedule {}", k.name()))
        })
        .collect::<Result<Vec<NoiseSchedule>>>()?;
    let visited = args.visited()?;
    if args.json {
        if schedules.len() != 1 {
            bail!(
                "--json prints one schedule; pass a single --kind (got {})",
                schedules.len()
            );
        }
        let s = &schedules[0];
        let mut out = json!({
            "config": args.config(args.kind[0]),
            "num_train_timesteps": args.timesteps,
            "betas": s.betas,
            "alphas_cumprod": s.alphas_cumprod,
        });
        if let Some(ts) = &visited {
            out["timesteps"] = json!(ts);
            out["spacing"] = json!(args.spacing);
        }
        println!("{out}");
    }
    if let Some(path) = &args.plot {
        plot(args, &schedules)
            .save_png(path)
            .with_context(|| format!("writing plot {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// β, α, ᾱ and log-SNR panels, one series per schedule.
fn plot(args: &ScheduleArgs, schedules: &[NoiseSchedule]) -> Figure {
    let suffix = if args.zero_terminal_snr {
        " [zero terminal SNR]"
    } else {
        ""
    };
    let panel = |title: &str, y: &str| {
        Chart::new(format!("{title}{suffix}"))
            .x_label("timestep t")
            .y_label(y)
    };
    let mut charts = [
        panel("beta_t", "beta").log_y(),
        panel("alpha_t", "alpha"),
        panel("alpha_bar_t", "alpha_bar"),
        panel("SNR(t)", "SNR").log_y(),
    ];
    for (kind, s) in args.kind.iter().zip(schedules) {
        let name = kind.name();
        let tables = [&s.betas, &s.alphas, &s.alphas_cumprod, &s.snr_table()];
        for (chart, ys) in charts.iter_mut().zip(tables) {
            chart.series.push(Series::from_ys(name, ys));
        }
    }
    charts.into_iter().fold(Figure::new(2), Figure::chart)
}
