//! One module per subcommand.

pub mod bench;
pub mod config;
pub mod export;
pub mod model;
pub mod sample;
pub mod schedule;
pub mod train;
