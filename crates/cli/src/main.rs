//! `difflab`: train, sample and inspect diffusion models.
#![forbid(unsafe_code)]

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use difflab_pipeline::DeviceSpec;

/// Diffusion models in Rust on libtorch: DDPM, DDIM, Cold Diffusion, cascades and ensembles.
#[derive(Parser, Debug)]
#[command(name = "difflab", version, about, propagate_version = true)]
struct Cli {
    /// Where tensors live: auto (CUDA when available), cpu, cuda or cuda:N. Default: the
    /// config's `device`, else auto.
    #[arg(long, global = true, value_parser = parse_device)]
    device: Option<DeviceSpec>,

    /// CPU threads libtorch may use (default: libtorch's choice, usually every core).
    /// `difflab sweep --jobs N` passes each child its share.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one model (base, SR stage or one expert) from a YAML config.
    Train(commands::train::TrainArgs),
    /// Inspect a noise schedule: print its tables as JSON or plot them.
    Schedule(commands::schedule::ScheduleArgs),
    /// Generate images with a trained model and any sampler.
    Sample(commands::sample::SampleArgs),
    /// Validate configs.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Write a difflab UNet as a diffusers UNet2DModel folder.
    Export(commands::export::ExportArgs),
    /// Inspect networks.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Expert ensembles: branch experts off a trained run.
    #[command(subcommand)]
    Ensemble(commands::ensemble::EnsembleCommand),
    /// Train and evaluate every point of a sweep file; write results tables and plots.
    Sweep(commands::sweep::SweepArgs),
    /// Sample-quality metrics (classifier-FID, KID, precision/recall, toy distances), and
    /// `eval train-reference` for the feature classifier.
    Eval(commands::eval::EvalArgs),
    /// Measure training and sampling throughput, FLOPs and peak memory of one model.
    Bench(commands::bench::BenchArgs),
    /// Check that difflab's training step equals PyTorch's on the same weights and batches.
    #[command(subcommand)]
    Parity(commands::parity::ParityCommand),
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
        .map_err(|e: difflab_pipeline::DeviceError| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    // Keep freed tensor memory for reuse rather than re-faulting it in every step.
    difflab_pipeline::allocator::tune_for_tensors();
    if let Some(n) = cli.threads {
        tch::set_num_threads(n as i32);
    }
    let result: Result<()> = match cli.command {
        Command::Train(args) => commands::train::run(&args, cli.device),
        Command::Schedule(args) => commands::schedule::run(&args),
        Command::Sample(args) => commands::sample::run(&args, cli.device.unwrap_or_default()),
        Command::Config(command) => commands::config::run(&command),
        Command::Model(command) => commands::model::run(&command),
        Command::Export(args) => commands::export::run(&args),
        Command::Ensemble(command) => commands::ensemble::run(&command),
        Command::Sweep(args) => commands::sweep::run(
            &args,
            &commands::sweep::Globals {
                device: cli.device,
                threads: cli.threads.map(|n| n as usize),
            },
        ),
        Command::Eval(args) => commands::eval::run(&args, cli.device),
        Command::Bench(args) => commands::bench::run(&args, cli.device),
        Command::Parity(command) => commands::parity::run(&command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
