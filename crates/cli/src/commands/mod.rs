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
