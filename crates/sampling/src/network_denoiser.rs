//! A [`Network`] seen by samplers as a [`Denoiser`].

use difflab_samplers::{Conditioning, Denoiser};
use difflab_schedulers::Prediction;
use tch::Tensor;

use difflab_pipeline::Network;

/// A network trained to predict `prediction`, as a [`Denoiser`] (eval mode: no dropout).
pub struct NetworkDenoiser<'a> {
    network: &'a Network,
    prediction: Prediction,
}

impl<'a> NetworkDenoiser<'a> {
    /// Wrap `network`.
    pub fn new(network: &'a Network, prediction: Prediction) -> Self {
        Self {
            network,
            prediction,
        }
    }
}

impl Denoiser for NetworkDenoiser<'_> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        self.network.forward_cond(x_t, t, cond, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use difflab_models::{UNet, UNetConfig};
    use tch::{Device, Kind, nn};

    #[test]
    fn every_conditioning_field_reaches_the_unet() {
        tch::manual_seed(0);
        let config: UNetConfig = serde_json::from_str(
            r#"{"block_out_channels": [4], "layers_per_block": 1, "norm_num_groups": 2,
                "mid_attention": "none", "num_classes": 2, "null_class": true,
                "label_dim": 3, "cond_channels": 1, "context_dim": 2}"#,
        )
        .expect("config");
        let vs = nn::VarStore::new(Device::Cpu);
        let unet = UNet::new(&vs.root(), &config).expect("unet");
        // Non-zero context gains, so the context changes the output.
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                if name.starts_with("context_gains.") {
                    var.copy_(&Tensor::randn(var.size(), (Kind::Float, Device::Cpu)));
                }
            }
        });
        let network = Network::Unet(unet);
        let denoiser = NetworkDenoiser::new(&network, Prediction::Eps);
        let f = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 4, 4], f);
        let t = Tensor::from(10i64);
        let cond = Conditioning {
            class_labels: Some(Tensor::from_slice(&[0i64, 1])),
            label_vector: Some(Tensor::ones([2, 3], f)),
            image: Some(Tensor::randn([2, 1, 4, 4], f)),
            context: Some(Tensor::randn([2, 2], f)),
            noise_level: None,
        };
        let base = tch::no_grad(|| denoiser.forward(&x, &t, &cond));
        assert_eq!(base.size(), [2, 3, 4, 4]);
        let changed = |edit: fn(&mut Conditioning)| {
            let mut c = cond.shallow_clone();
            edit(&mut c);
            let out = tch::no_grad(|| denoiser.forward(&x, &t, &c));
            (out - &base).abs().max().double_value(&[]) > 0.0
        };
        assert!(changed(|c| c.class_labels = None), "class labels ignored");
        assert!(changed(
            |c| c.label_vector = c.label_vector.as_ref().map(Tensor::zeros_like)
        ));
        assert!(changed(
            |c| c.image = c.image.as_ref().map(Tensor::zeros_like)
        ));
        assert!(changed(
            |c| c.context = c.context.as_ref().map(Tensor::zeros_like)
        ));
    }
}
