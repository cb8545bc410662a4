//! What a denoiser is conditioned on, besides x_t and t.

use tch::Tensor;

/// Optional conditioning inputs, all batched along dim 0 like x_t. Absent fields mean
/// "not conditioned on this".
#[derive(Debug, Default)]
pub struct Conditioning {
    /// Class index per sample, int64 `[B]`.
    pub class_labels: Option<Tensor>,
    /// Multi-hot (or one-hot) label vector per sample, float `[B, L]`.
    pub label_vector: Option<Tensor>,
    /// Conditioning image per sample, concatenated to the input channels, `[B, C', H, W]`.
    pub image: Option<Tensor>,
    /// A context vector per sample, float `[B, D]`.
    pub context: Option<Tensor>,
    /// Noise-augmentation level of the low-resolution input of a super-resolution stage,
    /// float `[B]` in `[0, 1]` (the low-resolution image itself travels in `image`).
    pub noise_level: Option<Tensor>,
}

fn cat_opt(a: &Option<Tensor>, b: &Option<Tensor>) -> Option<Tensor> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)),
        _ => None,
    }
}

impl Conditioning {
    /// No conditioning.
    pub fn none() -> Self {
        Self::default()
    }

    /// Conditioning on class labels only.
    pub fn classes(labels: Tensor) -> Self {
        Self {
            class_labels: Some(labels),
            ..Self::default()
        }
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.class_labels.is_none()
            && self.label_vector.is_none()
            && self.image.is_none()
            && self.context.is_none()
            && self.noise_level.is_none()
    }

    /// A cheap copy sharing storage.
    pub fn shallow_clone(&self) -> Self {
        let c = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
        Self {
            class_labels: c(&self.class_labels),
            label_vector: c(&self.label_vector),
            image: c(&self.image),
            context: c(&self.context),
            noise_level: c(&self.noise_level),
        }
    }

    /// The conditioning of the samples at `index` (int64 `[K]`), in that order: for routing
    /// part of a batch to another denoiser.
    pub fn index_select(&self, index: &Tensor) -> Self {
        let s = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(0, index));
        Self {
            class_labels: s(&self.class_labels),
            label_vector: s(&self.label_vector),
            image: s(&self.image),
            context: s(&self.context),
            noise_level: s(&self.noise_level),
        }
    }

    /// The "unconditional" version used by classifier-free guidance (Ho & Salimans 2022):
    /// class labels become `null_class` (the extra embedding row trained with label dropout),
    /// label and context vectors become zeros. The conditioning image (and a super-resolution
    /// stage's noise level) is kept: image-to-image models are guided on their labels, not on
    /// their input.
    pub fn unconditional(&self, null_class: i64) -> Self {
        Self {
            class_labels: self.class_labels.as_ref().map(|l| l.full_like(null_class)),
            label_vector: self.label_vector.as_ref().map(Tensor::zeros_like),
            image: self.image.as_ref().map(Tensor::shallow_clone),
            context: self.context.as_ref().map(Tensor::zeros_like),
            noise_level: self.noise_level.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// Both halves along the batch, `self` first (fields present in only one are dropped).
    pub fn cat(&self, other: &Self) -> Self {
        Self {
            class_labels: cat_opt(&self.class_labels, &other.class_labels),
            label_vector: cat_opt(&self.label_vector, &other.label_vector),
            image: cat_opt(&self.image, &other.image),
            context: cat_opt(&self.context, &other.context),
            noise_level: cat_opt(&self.noise_level, &other.noise_level),
        }
    }
}
