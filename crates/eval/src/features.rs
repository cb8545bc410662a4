//! Getting images into the classifier: resizing and channel conversion, then batched feature
//! extraction.

use tch::{Device, Kind, Tensor};

use crate::EvalError;
use crate::classifier::{ClassifierSpec, LeNet};

/// Images `[B, C, H, W]` in [−1, 1] made ready for a classifier of `spec`: RGB(A) to gray with
/// the Rec. 601 luma weights (0.299, 0.587, 0.114) or gray repeated to RGB, then bilinear
/// resizing to `input_size` (antialiased when shrinking, like PIL), all in f32.
pub fn prepare_images(x: &Tensor, spec: &ClassifierSpec) -> Result<Tensor, EvalError> {
    let size = x.size();
    if size.len() != 4 {
        return Err(EvalError::Input(format!(
            "images must be [B, C, H, W], got {size:?}"
        )));
    }
    let mut x = x.to_kind(Kind::Float);
    let c = size[1];
    x = match (c, spec.channels) {
        (a, b) if a == b => x,
        (1, 3) => x.repeat([1, 3, 1, 1]),
        (3 | 4, 1) => {
            let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .to_device(x.device())
                .view([1, 3, 1, 1]);
            (x.narrow(1, 0, 3) * w).sum_dim_intlist(1, true, Kind::Float)
        }
        (4, 3) => x.narrow(1, 0, 3),
        (a, b) => {
            return Err(EvalError::Input(format!(
                "cannot turn {a}-channel images into the classifier's {b} channels"
            )));
        }
    };
    let s = spec.input_size;
    if size[2] != s || size[3] != s {
        x = if size[2] > s || size[3] > s {
            x.internal_upsample_bilinear2d_aa([s, s], false, None, None)
        } else {
            x.upsample_bilinear2d([s, s], false, None, None)
        };
    }
    Ok(x)
}

/// Features and predicted classes of a set of images.
#[derive(Debug)]
pub struct Extracted {
    /// Penultimate-layer features `[N, D]`, f32 on the CPU.
    pub features: Tensor,
    /// argmax of the logits `[N]`, int64 on the CPU.
    pub predictions: Tensor,
}

/// Run `net` over images `[N, C, H, W]` in [−1, 1] (any size and channel count
/// [`prepare_images`] handles) in batches of `batch` on `device`, without gradients.
pub fn extract_features(
    net: &LeNet,
    images: &Tensor,
    batch: usize,
    device: Device,
) -> Result<Extracted, EvalError> {
    let _guard = tch::no_grad_guard();
    let n = images.size()[0];
    let mut features = Vec::new();
    let mut predictions = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (batch.max(1) as i64).min(n - start);
        let x = prepare_images(&images.narrow(0, start, len).to_device(device), net.spec())?;
        let f = net.features(&x);
        predictions.push(net.head(&f).argmax(1, false).to_device(Device::Cpu));
        features.push(f.to_device(Device::Cpu));
        start += len;
    }
    if features.is_empty() {
        return Err(EvalError::Input(
            "no images to extract features from".into(),
        ));
    }
    Ok(Extracted {
        features: Tensor::cat(&features, 0),
        predictions: Tensor::cat(&predictions, 0),
    })
}
