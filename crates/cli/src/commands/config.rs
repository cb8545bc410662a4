//! `difflab config check`: validate a config and print its resolved form.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use difflab_pipeline::Override;
use difflab_pipeline::config::{load_config, to_yaml};

/// `difflab config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and validate a config; print it with every default filled in.
    Check(CheckArgs),
}

/// Arguments of `difflab config check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The YAML config.
    file: PathBuf,
    /// Override a key: `--set schedule.kind=cosine` (value parsed as YAML). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
}

/// Shared `--set` parser.
pub fn parse_override(s: &str) -> Result<Override, String> {
    s.parse()
        .map_err(|e: difflab_pipeline::ConfigError| e.to_string())
}

/// Run the command.
pub fn run(command: &ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check(args) => {
            let config = load_config(&args.file, &args.overrides)?;
            print!("{}", to_yaml(&config));
            eprintln!("ok: {} is valid", args.file.display());
            Ok(())
        }
    }
}
