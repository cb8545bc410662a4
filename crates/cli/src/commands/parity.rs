//! `difflab parity`: check that difflab trains exactly as PyTorch does (see
//! `difflab_train::parity` and docs/training-parity.md).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use difflab_pipeline::Override;
use difflab_pipeline::config::load_config;
use difflab_train::Engine;
use difflab_train::parity::{CheckOptions, Tolerances, check, record};

use super::config::parse_override;

/// `difflab parity …`.
#[derive(Subcommand, Debug)]
pub enum ParityCommand {
    /// Run a few steps of a config and write its weights, inputs and results to a folder for
    /// `scripts/parity/torch_reference.py`.
    Record(RecordArgs),
    /// Replay a recorded folder with difflab and compare with PyTorch's `torch.safetensors`.
    Check(CheckArgs),
}

/// Arguments of `difflab parity record`.
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The experiment config (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Override config keys (value parsed as YAML). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// Optimizer steps to record.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    steps: u64,
    /// The folder to write (created).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `difflab parity check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A folder written by `difflab parity record` and `torch_reference.py`.
    dir: PathBuf,
    /// The step engine to replay with: auto, libtorch or fused_cpu.
    #[arg(long, default_value = "auto", value_parser = parse_engine)]
    engine: Engine,
    /// Override keys of the recorded config, e.g. `--set training.memory_format=contiguous`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
    /// Tolerance of each step-1 gradient (relative, per tensor).
    #[arg(long, default_value_t = Tolerances::default().gradient, value_parser = super::finite)]
    gradient_tolerance: f64,
}

fn parse_engine(s: &str) -> Result<Engine, String> {
    match s {
        "auto" => Ok(Engine::Auto),
        "libtorch" => Ok(Engine::Libtorch),
        "fused_cpu" => Ok(Engine::FusedCpu),
        other => Err(format!(
            "unknown engine `{other}`: expected auto, libtorch or fused_cpu"
        )),
    }
}

/// Run the command.
pub fn run(command: &ParityCommand) -> Result<()> {
    match command {
        ParityCommand::Record(args) => {
            let config = load_config(&args.config, &args.overrides)?;
            record(&config, args.steps, &args.out)
                .with_context(|| format!("recording {} steps", args.steps))?;
            eprintln!(
                "recorded {} steps of {} in {}; next: .venv/bin/python scripts/parity/torch_reference.py {}",
                args.steps,
                config.name,
                args.out.display(),
                args.out.display()
            );
            Ok(())
        }
        ParityCommand::Check(args) => {
            let options = CheckOptions {
                engine: args.engine,
                overrides: args.overrides.clone(),
                tolerances: Tolerances {
                    gradient: args.gradient_tolerance,
                    ..Tolerances::default()
                },
            };
            let report = check(&args.dir, &options)
                .with_context(|| format!("checking {}", args.dir.display()))?;
            println!(
                "{} steps replayed with the {} engine against PyTorch:\n\n{}",
                report.steps,
                report.engine,
                report.table()
            );
            if !report.passed() {
                bail!("difflab and PyTorch differ beyond the tolerances above");
            }
            Ok(())
        }
    }
}
