//! What one micro-batch of a training step is made of: clean data, timesteps, noise and
//! conditioning, drawn in one place. Everything random about a step but the network's own
//! dropout is drawn here, so a step can be replayed from saved inputs (the parity harness
//! against PyTorch, [`super::parity`]).

use std::collections::HashMap;

use difflab_samplers::Conditioning;
use tch::{Device, Kind, Tensor};

use super::objective::Process;
use difflab_data::Batch;
use difflab_pipeline::{ExperimentConfig, ModelConfig};
use difflab_sampling::cascade::{area_downsample, augment_lowres};

/// The inputs of one micro-batch's loss: `x_t` is formed from `x0`, `t` and `noise` by the
/// process, and the network also reads `cond`.
#[derive(Debug)]
pub struct StepInputs {
    /// Clean data x₀ `[B, …]` on the training device.
    pub x0: Tensor,
    /// Timesteps (Gaussian) or degradation levels (cold), int64 `[B]`.
    pub t: Tensor,
    /// Noise ε, the shape of `x0` (offset noise already added).
    pub noise: Tensor,
    /// Conditioning after label dropout (and, for SR stages, the augmented low-resolution
    /// image and its level).
    pub cond: Conditioning,
}

/// The names [`StepInputs::to_named`] writes, for the optional conditioning fields.
const COND_NAMES: [&str; 5] = [
    "class_labels",
    "label_vector",
    "image",
    "context",
    "noise_level",
];

impl StepInputs {
    /// Draw the inputs of `batch` from libtorch's global generator (seeded by the caller, see
    /// [`super::Learner::step`]), in this order: label-dropout mask `U[0,1)^B < p` (the same
    /// mask drops every label route: class labels become the null class, label vectors zero),
    /// for SR stages the low-resolution image's augmentation level `U[0, train_max)` and its
    /// noise, the noise ε (plus offset noise `s·n`, `n` per sample and channel), and the
    /// timesteps, uniform integers in `process`'s range.
    pub(crate) fn draw(
        batch: &Batch,
        process: &Process,
        config: &ExperimentConfig,
        device: Device,
    ) -> Self {
        let training = &config.training;
        let x0 = batch.x.to_device(device);
        let b = x0.size()[0];
        let opts = (Kind::Float, device);
        let null_class = match &config.model {
            ModelConfig::Unet(u) if u.null_class => u.num_classes,
            _ => None,
        };
        let drop = (training.label_dropout > 0.0)
            .then(|| Tensor::rand([b], opts).lt(training.label_dropout));
        let class_labels = batch.class_labels.as_ref().map(|l| {
            let l = l.to_device(device);
            match (&drop, null_class) {
                (Some(mask), Some(null)) => l.where_self(&mask.logical_not(), &l.full_like(null)),
                _ => l,
            }
        });
        let label_vector = batch.label_vector.as_ref().map(|v| {
            let v = v.to_device(device);
            match &drop {
                Some(mask) => &v * mask.logical_not().to_kind(Kind::Float).unsqueeze(1),
                None => v,
            }
        });
        let mut cond = Conditioning {
            class_labels,
            label_vector,
            image: batch.cond_image.as_ref().map(|c| c.to_device(device)),
            context: None,
            noise_level: None,
        };
        if let (ModelConfig::SrUnet(_), Some(r)) = (&config.model, config.data.lowres) {
            // Noise-conditioning augmentation: a fresh level per image in [0, train_max].
            let lowres = area_downsample(&x0, r);
            let level = Tensor::rand([b], opts) * training.lowres_noise.train_max;
            cond.image = Some(augment_lowres(&lowres, &level, &lowres.randn_like()));
            cond.noise_level = Some(level);
        }
        let mut noise = x0.randn_like();
        if training.offset_noise > 0.0 && x0.dim() == 4 {
            let s = x0.size();
            noise += Tensor::randn([s[0], s[1], 1, 1], opts) * training.offset_noise;
        }
        let (lo, hi) = process.levels();
        let t = Tensor::randint_low(lo, hi, [b], (Kind::Int64, device));
        Self { x0, t, noise, cond }
    }

    /// A copy sharing storage.
    pub fn shallow_clone(&self) -> Self {
        Self {
            x0: self.x0.shallow_clone(),
            t: self.t.shallow_clone(),
            noise: self.noise.shallow_clone(),
            cond: self.cond.shallow_clone(),
        }
    }

    /// The inputs as named CPU tensors (`<prefix>x0`, `<prefix>t`, `<prefix>noise`,
    /// `<prefix>class_labels`, … for the conditioning that is set), for saving.
    pub fn to_named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let c = &self.cond;
        let cond = [
            &c.class_labels,
            &c.label_vector,
            &c.image,
            &c.context,
            &c.noise_level,
        ];
        [
            ("x0", Some(&self.x0)),
            ("t", Some(&self.t)),
            ("noise", Some(&self.noise)),
        ]
        .into_iter()
        .chain(COND_NAMES.into_iter().zip(cond.map(Option::as_ref)))
        .filter_map(|(name, t)| t.map(|t| (format!("{prefix}{name}"), t.to_device(Device::Cpu))))
        .collect()
    }

    /// The inputs [`StepInputs::to_named`] saved under `prefix`, on `device`; `None` when
    /// `x0`, `t` or `noise` is missing.
    pub fn from_named(
        named: &HashMap<String, Tensor>,
        prefix: &str,
        device: Device,
    ) -> Option<Self> {
        let get = |name: &str| {
            named
                .get(&format!("{prefix}{name}"))
                .map(|t| t.to_device(device))
        };
        let cond = COND_NAMES.map(get);
        let [class_labels, label_vector, image, context, noise_level] = cond;
        Some(Self {
            x0: get("x0")?,
            t: get("t")?,
            noise: get("noise")?,
            cond: Conditioning {
                class_labels,
                label_vector,
                image,
                context,
                noise_level,
            },
        })
    }
}
