//! `difflab ensemble split`: branch expert configs off a trained run (eDiff-I workflow).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use difflab_lab::sweep::shell_join;
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
    /// Replace expert configs or an `ensemble.yaml` that differ from what this split writes
    /// (e.g. edited by hand since an earlier split).
    #[arg(long)]
    overwrite: bool,
}

/// Run the command.
pub fn run(command: &EnsembleCommand) -> Result<()> {
    match command {
        EnsembleCommand::Split(args) => split(args),
    }
}

/// `text` safe inside a YAML comment line: control characters escaped.
fn comment(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
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
    let mut files: Vec<(PathBuf, String)> = Vec::new();
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
        let command = shell_join(
            Path::new("difflab"),
            &[
                "train".into(),
                "--config".into(),
                file.display().to_string(),
                "--init".into(),
                args.run.join("checkpoints/latest").display().to_string(),
                "--out".into(),
                runs_root.join(&name).display().to_string(),
            ],
        );
        // Paths go into comments escaped: a newline in one cannot start a YAML line.
        let text = format!(
            "# Expert for timesteps [{lo}, {hi}) branched from {}; train it with\n#   {}\n{}",
            comment(&args.run.display().to_string()),
            comment(&command),
            to_yaml(&expert)
        );
        files.push((file, text));
        commands.push(command);
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
        comment(&args.run.display().to_string()),
        bounds,
        commands
            .iter()
            .map(|c| format!("#   {}\n", comment(c)))
            .collect::<String>(),
        comment(&path.display().to_string()),
        serde_saphyr::to_string(&manifest).context("manifest to YAML")?
    );
    files.push((path.clone(), text));
    // Nothing is replaced that differs from what this split writes, unless asked: a manifest
    // edited by hand since an earlier split is not lost.
    if !args.overwrite {
        for (file, text) in &files {
            if let Ok(old) = std::fs::read_to_string(file)
                && old != *text
            {
                bail!(
                    "{} exists and differs from what this split writes (edited since an earlier split?); pass --overwrite to replace it, or --out to write elsewhere",
                    file.display()
                );
            }
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (file, text) in &files {
        difflab_pipeline::files::write_atomic(file, text.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
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
