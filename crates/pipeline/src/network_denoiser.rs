//! A [`Network`] seen by samplers as a [`Denoiser`].

use difflab_models::UNetInputs;
use difflab_samplers::{Conditioning, Denoiser};
use difflab_schedulers::Prediction;
use tch::Tensor;

use crate::Network;

impl Network {
    /// The network's output for `x_t` at timesteps `t` with `cond`; `train` enables dropout.
    /// An SR-UNet takes its (augmented) low-resolution image from `cond.image` and the
    /// augmentation level from `cond.noise_level`.
    ///
    /// # Panics
    /// When an SR-UNet is given no low-resolution image or level (a programming error: the
    /// trainer and the cascade always set both).
    pub fn forward_cond(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        train: bool,
    ) -> Tensor {
        match self {
            Network::Unet(unet) => {
                let inputs = UNetInputs {
                    class_labels: cond.class_labels.as_ref(),
                    label_vector: cond.label_vector.as_ref(),
                    cond_image: cond.image.as_ref(),
                    context: cond.context.as_ref(),
                    ..UNetInputs::default()
                };
                unet.forward_with(x_t, t, &inputs, train)
            }
            Network::Mlp(mlp) => mlp.forward(x_t, t),
            Network::SrUnet(sr) => {
                let (Some(lowres), Some(level)) = (&cond.image, &cond.noise_level) else {
                    panic!(
                        "an SR-UNet needs its low-resolution image (Conditioning::image) and noise level (Conditioning::noise_level)"
                    )
                };
                let inputs = UNetInputs {
                    class_labels: cond.class_labels.as_ref(),
                    label_vector: cond.label_vector.as_ref(),
                    context: cond.context.as_ref(),
                    lowres_noise_level: Some(level),
                    ..UNetInputs::default()
                };
                sr.f_forward_with(x_t, t, lowres, &inputs, train)
                    .unwrap_or_else(|e| panic!("SR-UNet: {e}"))
            }
        }
    }
}

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
