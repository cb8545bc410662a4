//! The adapter that lets a sampler call a network: models know nothing of prediction types or
//! conditioning structs, samplers know nothing of networks.

use difflab_models::{UNet, UNetInputs};
use difflab_samplers::{Conditioning, Denoiser};
use difflab_schedulers::Prediction;
use tch::Tensor;

/// A [`UNet`] seen as a [`Denoiser`] whose output is `prediction` (the objective it was
/// trained with). Runs in eval mode (no dropout).
pub struct UNetDenoiser<'a> {
    unet: &'a UNet,
    prediction: Prediction,
}

impl<'a> UNetDenoiser<'a> {
    /// Wrap `unet`, trained to predict `prediction`.
    pub fn new(unet: &'a UNet, prediction: Prediction) -> Self {
        Self { unet, prediction }
    }
}

impl Denoiser for UNetDenoiser<'_> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Every field of `cond` goes to the matching UNet input (`image` → `cond_image`).
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        let inputs = UNetInputs {
            class_labels: cond.class_labels.as_ref(),
            label_vector: cond.label_vector.as_ref(),
            cond_image: cond.image.as_ref(),
            context: cond.context.as_ref(),
            ..UNetInputs::default()
        };
        self.unet.forward_with(x_t, t, &inputs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use difflab_models::UNetConfig;
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
        let denoiser = UNetDenoiser::new(&unet, Prediction::Eps);
        let f = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 4, 4], f);
        let t = Tensor::from(10i64);
        let cond = Conditioning {
            class_labels: Some(Tensor::from_slice(&[0i64, 1])),
            label_vector: Some(Tensor::ones([2, 3], f)),
            image: Some(Tensor::randn([2, 1, 4, 4], f)),
            context: Some(Tensor::randn([2, 2], f)),
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
