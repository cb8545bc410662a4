//! One module per subcommand.

pub mod sample;
pub mod schedule;
