//! A synthetic batch for timing the training step without the data loader (the bench) and for
//! tests of the step's parts.

use difflab_data::Batch;
use difflab_pipeline::{ExperimentConfig, ModelConfig};
use tch::{Device, Kind, Tensor};

/// The shape of one batch of `config`'s examples.
pub fn example_shape(config: &ExperimentConfig, batch: i64, resolution: i64) -> Vec<i64> {
    match &config.model {
        ModelConfig::Unet(u) => vec![batch, u.in_channels, resolution, resolution],
        ModelConfig::Mlp(m) => vec![batch, m.data_dim],
        ModelConfig::SrUnet(s) => vec![batch, s.unet.in_channels, resolution, resolution],
    }
}

/// A synthetic batch in [−1, 1] with whatever conditioning the model takes (the data loader
/// is measured on its own: this times the model, loss and optimizer only).
pub fn synthetic_batch(config: &ExperimentConfig, batch: i64, resolution: i64) -> Batch {
    let f = (Kind::Float, Device::Cpu);
    let x = Tensor::rand(example_shape(config, batch, resolution), f) * 2.0 - 1.0;
    let (mut class_labels, mut label_vector, mut cond_image) = (None, None, None);
    if let ModelConfig::Unet(u) = &config.model {
        class_labels = u
            .num_classes
            .map(|k| Tensor::randint(k, [batch], (Kind::Int64, Device::Cpu)));
        label_vector = u.label_dim.map(|d| Tensor::rand([batch, d], f).round());
        cond_image = (u.cond_channels > 0)
            .then(|| Tensor::rand([batch, u.cond_channels, resolution, resolution], f) * 2.0 - 1.0);
    }
    Batch {
        x,
        class_labels,
        label_vector,
        cond_image,
    }
}
