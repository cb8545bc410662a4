//! Training-run logging: TensorBoard event files ([`EventWriter`]) and the terminal progress
//! display of the training loop ([`TrainProgress`]).
//!
//! The event writer is our own: TFRecord framing with masked CRC32C and a hand-written encoder
//! for the few protobuf messages TensorBoard needs (scalars, PNG images, markdown text). Its
//! output is checked against TensorBoard's own reader in `tests/tensorboard.rs`.

pub mod progress;
pub mod tensorboard;

pub use progress::TrainProgress;
pub use tensorboard::{EventWriter, LogError};
