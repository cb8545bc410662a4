//! What a [`UNet`](super::UNet) reads besides `x_t` and `t`, and the checks that turn those
//! inputs into tensors of the right shape, type and device.

use tch::{Kind, Tensor};

use crate::{ModelError, UNetConfig};

/// The optional conditioning inputs of one forward pass, borrowed. Each field belongs to one
/// route of [`UNetConfig`]; a route the model lacks must be `None`, and a route the model has
/// must be given unless a default is documented below. `B` is the batch size of `x_t`, `H`×`W`
/// its resolution.
#[derive(Clone, Copy, Debug, Default)]
pub struct UNetInputs<'a> {
    /// Class index per sample, int64 `[B]` in `0..num_classes` (`num_classes` itself is the
    /// null class when the model has one). `None` means the null class (if any).
    pub class_labels: Option<&'a Tensor>,
    /// Multi-hot (or one-hot) float vector per sample, `[B, label_dim]`; zeros mean "no label".
    pub label_vector: Option<&'a Tensor>,
    /// Conditioning image, floating `[B, cond_channels, H, W]`.
    pub cond_image: Option<&'a Tensor>,
    /// Context vector, floating `[B, context_dim]`.
    pub context: Option<&'a Tensor>,
    /// Previous x̂₀ estimate for self-conditioning, floating `[B, out_channels, H, W]`;
    /// `None` means zeros (the first pass of Chen et al. 2022).
    pub self_cond: Option<&'a Tensor>,
    /// Noise-augmentation level of the low-resolution image, `[B]`, `[1]` or a scalar: int64
    /// levels `>= 0` or floats in `[0, 1]` (see
    /// [`NoiseLevelEmbeddingConfig`](super::NoiseLevelEmbeddingConfig)).
    pub lowres_noise_level: Option<&'a Tensor>,
}

impl<'a> UNetInputs<'a> {
    /// Only class labels: the inputs of a class-conditional model (`None`: the null class), or,
    /// with `None`, of an unconditional one.
    pub fn classes(class_labels: Option<&'a Tensor>) -> Self {
        Self {
            class_labels,
            ..Self::default()
        }
    }

    /// Only the low-resolution image's noise-augmentation level: the one input an
    /// [`SrUNet`](crate::SrUNet) requires besides the image itself.
    pub fn noise_level(level: &'a Tensor) -> Self {
        Self {
            lowres_noise_level: Some(level),
            ..Self::default()
        }
    }
}

/// Inputs after checking, on `x`'s device and (for floats) in `x`'s dtype.
pub(super) struct Checked {
    /// `x` with the conditioning image and self-conditioning channels appended.
    pub x: Tensor,
    /// Timesteps, `[B]`.
    pub t: Tensor,
    /// Class labels, int64 `[B]` (the null class filled in).
    pub labels: Option<Tensor>,
    /// Label vectors, `[B, label_dim]`.
    pub label_vector: Option<Tensor>,
    /// Context vectors, `[B, context_dim]`.
    pub context: Option<Tensor>,
    /// Noise levels ready for the sinusoidal code (floats scaled by `float_scale`), `[B]`.
    pub noise_level: Option<Tensor>,
}

fn bad(what: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

/// `given` is required by the model when `needed` names the config key; otherwise it must be
/// absent.
fn presence<'t>(
    what: &'static str,
    given: Option<&'t Tensor>,
    needed: Option<&str>,
) -> Result<Option<&'t Tensor>, ModelError> {
    match (given, needed) {
        (None, Some(key)) => Err(bad(what, format!("required: the model has {key}"))),
        (Some(_), None) => Err(bad(
            what,
            format!("given, but the model has no {what} input"),
        )),
        (given, _) => Ok(given),
    }
}

/// A floating tensor of exactly `shape`, converted to `like`'s dtype and device.
fn floating(
    what: &'static str,
    t: &Tensor,
    shape: &[i64],
    like: &Tensor,
) -> Result<Tensor, ModelError> {
    if !t.is_floating_point() || t.size() != shape {
        return Err(bad(
            what,
            format!(
                "expected a floating tensor of shape {shape:?}, got {:?} {:?}",
                t.kind(),
                t.size()
            ),
        ));
    }
    Ok(t.to_device(like.device()).to_kind(like.kind()))
}

/// A per-sample scalar given as `[B]`, `[1]` or `[]`, integer or floating, broadcast to `[B]`.
fn per_sample(what: &'static str, t: &Tensor, b: i64) -> Result<Tensor, ModelError> {
    let size = t.size();
    if size.len() > 1 || !(t.numel() == 1 || t.numel() as i64 == b) {
        return Err(bad(
            what,
            format!("expected [B] (B = {b}), [1] or a scalar, got shape {size:?}"),
        ));
    }
    if matches!(t.kind(), Kind::Bool) || t.is_complex() {
        return Err(bad(
            what,
            format!("expected an integer or floating tensor, got {:?}", t.kind()),
        ));
    }
    Ok(t.reshape([-1]).expand([b], false))
}

/// Check every input against `config` (with `levels` resolution levels); errors name the
/// input.
pub(super) fn check(
    config: &UNetConfig,
    levels: usize,
    x: &Tensor,
    t: &Tensor,
    inputs: &UNetInputs<'_>,
) -> Result<Checked, ModelError> {
    let size = x.size();
    if size.len() != 4 {
        return Err(bad(
            "x",
            format!("expected [B, C, H, W], got shape {size:?}"),
        ));
    }
    if !x.is_floating_point() {
        return Err(bad(
            "x",
            format!("expected a floating tensor, got {:?}", x.kind()),
        ));
    }
    let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
    if c != config.in_channels {
        return Err(bad(
            "x",
            format!(
                "model has {} input channels, x has shape {size:?}",
                config.in_channels
            ),
        ));
    }
    let factor = 1i64 << (levels - 1);
    if h < 1 || w < 1 || h % factor != 0 || w % factor != 0 {
        return Err(bad(
            "x",
            format!(
                "height and width must be positive multiples of {factor} (2^(levels-1)), got shape {size:?}"
            ),
        ));
    }
    let device = x.device();
    let t = per_sample("t", t, b)?.to_device(device);

    let rows = config.class_rows();
    let labels = match (rows, inputs.class_labels) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(bad(
                "class_labels",
                "given, but the model has no class embedding (num_classes unset)",
            ));
        }
        (Some(rows), None) => {
            if !config.null_class {
                return Err(bad(
                    "class_labels",
                    "required: the model is class-conditional and has no null class",
                ));
            }
            Some(Tensor::full([b], rows - 1, (Kind::Int64, device)))
        }
        (Some(rows), Some(labels)) => {
            if labels.kind() != Kind::Int64 || labels.size() != [b] {
                return Err(bad(
                    "class_labels",
                    format!(
                        "expected int64 [B] (B = {b}), got {:?} {:?}",
                        labels.kind(),
                        labels.size()
                    ),
                ));
            }
            let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
            if lo < 0 || hi >= rows {
                return Err(bad(
                    "class_labels",
                    format!("values must be in 0..{rows}, got range {lo}..={hi}"),
                ));
            }
            Some(labels.to_device(device))
        }
    };

    let label_vector = presence(
        "label_vector",
        inputs.label_vector,
        config.label_dim.map(|_| "label_dim set"),
    )?
    .map(|v| floating("label_vector", v, &[b, config.label_dim.unwrap_or(0)], x))
    .transpose()?;

    let context = presence(
        "context",
        inputs.context,
        config.context_dim.map(|_| "context_dim set"),
    )?
    .map(|v| floating("context", v, &[b, config.context_dim.unwrap_or(0)], x))
    .transpose()?;

    let mut channels = vec![x.shallow_clone()];
    let cond_key = format!("cond_channels = {}", config.cond_channels);
    if let Some(image) = presence(
        "cond_image",
        inputs.cond_image,
        (config.cond_channels > 0).then_some(cond_key.as_str()),
    )? {
        channels.push(floating(
            "cond_image",
            image,
            &[b, config.cond_channels, h, w],
            x,
        )?);
    }
    if config.self_condition {
        let shape = [b, config.out_channels, h, w];
        channels.push(match inputs.self_cond {
            Some(prev) => floating("self_cond", prev, &shape, x)?,
            None => Tensor::zeros(shape, (x.kind(), device)),
        });
    } else if inputs.self_cond.is_some() {
        return Err(bad(
            "self_cond",
            "given, but the model has no self_cond input (self_condition is false)",
        ));
    }
    let x = if channels.len() == 1 {
        channels.pop().unwrap_or_else(|| x.shallow_clone())
    } else {
        Tensor::cat(&channels, 1)
    };

    let noise_level = match presence(
        "lowres_noise_level",
        inputs.lowres_noise_level,
        config.lowres_noise_level.map(|_| "lowres_noise_level set"),
    )? {
        None => None,
        Some(level) => {
            let level = per_sample("lowres_noise_level", level, b)?.to_device(device);
            let scale = config.lowres_noise_level.map_or(1.0, |n| n.float_scale);
            let is_float = level.is_floating_point();
            let level = level.to_kind(Kind::Float);
            let (lo, hi) = (level.min().double_value(&[]), level.max().double_value(&[]));
            if is_float {
                if !(lo >= 0.0 && hi <= 1.0) {
                    return Err(bad(
                        "lowres_noise_level",
                        format!("float levels must be in [0, 1], got range {lo}..={hi}"),
                    ));
                }
                Some(level * scale)
            } else {
                if lo < 0.0 {
                    return Err(bad(
                        "lowres_noise_level",
                        format!("integer levels must be >= 0, got minimum {lo}"),
                    ));
                }
                Some(level)
            }
        }
    };

    Ok(Checked {
        x,
        t,
        labels,
        label_vector,
        context,
        noise_level,
    })
}
