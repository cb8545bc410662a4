//! The feature network: a small LeNet-style CNN (LeCun et al. 1998, "Gradient-based learning
//! applied to document recognition") whose penultimate layer is the feature space of
//! classifier-FID, KID and precision/recall.
//!
//! ```text
//! x [B, C, S, S] in [−1, 1]
//! conv 5×5, 16 ─ ReLU ─ max-pool 2      (S/2)
//! conv 5×5, 32 ─ ReLU ─ max-pool 2      (S/4)
//! conv 3×3, 64 ─ ReLU ─ max-pool 2      (S/8)
//! adaptive average pool to 4×4 ─ flatten (1024)
//! linear 1024 → D ─ ReLU                 = features [B, D]   (D = 128 by default)
//! linear D → classes                     = logits
//! ```
//!
//! At S = 32 the adaptive pool is the identity; other sizes (e.g. 64-px RGB data on the
//! generic path) work unchanged. No dropout or batch norm: training and inference are the same
//! function, which keeps training reproducible and features deterministic.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, Module};

/// The shape of a [`LeNet`]: what it reads and what it outputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    /// Side length S of the square input images; others are resized to it.
    pub input_size: i64,
    /// Input channels (1 or 3).
    pub channels: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// Width D of the penultimate (feature) layer.
    pub feature_dim: i64,
}

impl ClassifierSpec {
    /// The spec of the shipped Fashion-MNIST reference: 32×32 gray, 10 classes, 128 features.
    pub fn fashion_mnist() -> Self {
        Self {
            input_size: 32,
            channels: 1,
            num_classes: 10,
            feature_dim: 128,
        }
    }
}

/// The LeNet-style classifier (see the module docs for the layers).
#[derive(Debug)]
pub struct LeNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    conv3: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    spec: ClassifierSpec,
}

impl LeNet {
    /// Create the layers under `vs` (variables `conv1`, `conv2`, `conv3`, `fc1`, `fc2`, each with
    /// `weight` and `bias`; tch's default init, i.e. PyTorch's Kaiming-uniform).
    pub fn new(vs: &nn::Path, spec: &ClassifierSpec) -> Self {
        let conv = |name: &str, i: i64, o: i64, k: i64| {
            nn::conv2d(
                vs / name,
                i,
                o,
                k,
                nn::ConvConfig {
                    padding: k / 2,
                    ..Default::default()
                },
            )
        };
        Self {
            conv1: conv("conv1", spec.channels, 16, 5),
            conv2: conv("conv2", 16, 32, 5),
            conv3: conv("conv3", 32, 64, 3),
            fc1: nn::linear(vs / "fc1", 64 * 16, spec.feature_dim, Default::default()),
            fc2: nn::linear(
                vs / "fc2",
                spec.feature_dim,
                spec.num_classes,
                Default::default(),
            ),
            spec: spec.clone(),
        }
    }

    /// The spec it was built with.
    pub fn spec(&self) -> &ClassifierSpec {
        &self.spec
    }

    /// Penultimate-layer activations `[B, D]` (after the ReLU) of images `[B, C, S, S]`
    /// already prepared by [`crate::prepare_images`].
    pub fn features(&self, x: &Tensor) -> Tensor {
        let x = x.apply(&self.conv1).relu().max_pool2d_default(2);
        let x = x.apply(&self.conv2).relu().max_pool2d_default(2);
        let x = x.apply(&self.conv3).relu().max_pool2d_default(2);
        x.adaptive_avg_pool2d([4, 4])
            .flatten(1, -1)
            .apply(&self.fc1)
            .relu()
    }

    /// Class logits `[B, classes]` from features `[B, D]`.
    pub fn head(&self, features: &Tensor) -> Tensor {
        self.fc2.forward(features)
    }

    /// Class logits `[B, classes]` of images.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.head(&self.features(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shapes_for_several_input_sizes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ClassifierSpec::fashion_mnist();
        let net = LeNet::new(&vs.root(), &spec);
        let x = Tensor::zeros([3, 1, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(net.features(&x).size(), [3, 128]);
        assert_eq!(net.logits(&x).size(), [3, 10]);
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ClassifierSpec {
            input_size: 64,
            channels: 3,
            num_classes: 4,
            feature_dim: 64,
        };
        let net = LeNet::new(&vs.root(), &spec);
        let x = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.logits(&x).size(), [2, 4]);
    }
}
