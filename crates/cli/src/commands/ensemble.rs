//! `difflab ensemble split`: branch expert configs off a trained run (eDiff-I workflow).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use difflab_pipeline::config::{load_recorded_config, to_yaml};
use difflab_sampling::{EnsembleManifest, ExpertEntry, WeightsKind};
use difflab_train::RunDir;

/// `difflab ensemble …`.
#[derive(Subcommand, Debug)]
pub enum EnsembleCommand {
    /// Write one config per expert (the run's config restricted to a timestep interval) and the
    /// ensemble manifest that joins them; prints the commands that train the experts from the
    /// run's weights.
    Split(SplitArgs),
}

/// Arguments of `difflab ensemble split`.
#[derive(Args, Debug)]
pub struct SplitArgs {
    /// The trained run the experts start from.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Interval boundaries, e.g. `500` (two experts) or `250,500,750` (four).
    #[arg(long, value_delimiter = ',', required = true)]
    at: Vec<i64>,
    /// Where the expert configs and `ensemble.yaml` go (default: RUN/experts).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the experts' runs will live (default: next to RUN).
    #[arg(long)]
    runs: Option<PathBuf>,
}

/// Run the command.
pub fn run(command: &EnsembleCommand) -> Result<()> {
    match command {
        EnsembleCommand::Split(args) => split(args),
    }
}

fn split(args: &SplitArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    let config = load_recorded_config(&run.config(), &[])
        .with_context(|| format!("--run {}: reading its config.yaml", args.run.display()))?;
    let t = config.schedule.timesteps as i64;
    let mut bounds = args.at.clone();
    bounds.sort_unstable();
    bounds.dedup();
    if let Some(b) = bounds.iter().find(|&&b| b <= 0 || b >= t) {
        bail!("--at {b}: boundaries must lie strictly inside (0, {t}) (schedule.timesteps)");
    }
    let out = args.out.clone().unwrap_or_else(|| args.run.join("experts"));
    let runs_root = args
        .runs
        .clone()
        .unwrap_or_else(|| args.run.parent().map(Path::to_path_buf).unwrap_or_default());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut edges = vec![0];
    edges.extend(&bounds);
    edges.push(t);
    let mut experts = Vec::new();
    let mut commands = Vec::new();
    for w in edges.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let name = format!("{}-t{lo}-{hi}", config.name);
        let mut expert = config.clone();
        expert.name = name.clone();
        expert.training.timestep_range = Some([lo as usize, hi as usize]);
        let file = out.join(format!("{name}.yaml"));
        let text = format!(
            "# Expert for timesteps [{lo}, {hi}) branched from {}; train it with\n#   difflab train --config {} --init {} --out {}\n{}",
            args.run.display(),
            file.display(),
            args.run.join("checkpoints/latest").display(),
            runs_root.join(&name).display(),
            to_yaml(&expert)
        );
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        commands.push(format!(
            "difflab train --config {} --init {} --out {}",
            file.display(),
            args.run.join("checkpoints/latest").display(),
            runs_root.join(&name).display()
        ));
        experts.push(ExpertEntry {
            name: name.clone(),
            run: Some(runs_root.join(&name)),
            checkpoint: None,
            interval: [lo, hi],
            weights: WeightsKind::Ema,
        });
    }
    let manifest = EnsembleManifest { experts };
    let path = out.join("ensemble.yaml");
    let text = format!(
        "# Expert ensemble split from {} at {:?}. Train the experts:\n{}# then sample:\n#   difflab sample --config {} -n 16\n{}",
        args.run.display(),
        bounds,
        commands
            .iter()
            .map(|c| format!("#   {c}\n"))
            .collect::<String>(),
        path.display(),
        serde_saphyr::to_string(&manifest).context("manifest to YAML")?
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} expert configs and {}",
        edges.len() - 1,
        path.display()
    );
    println!("train the experts (each starts from the run's weights):");
    for c in &commands {
        println!("  {c}");
    }
    println!(
        "then sample: difflab sample --config {} -n 16",
        path.display()
    );
    Ok(())
}
