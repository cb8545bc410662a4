//! Writing a native [`UNet`] as a diffusers `UNet2DModel` folder (`config.json` +
//! `diffusion_pytorch_model.safetensors`) that diffusers' `UNet2DModel.from_pretrained` loads.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use tch::{Device, Kind, Tensor, nn::VarStore};

use super::{CONFIG_FILE, DiffusersUNetConfig, WEIGHTS_FILE};
use crate::{AttentionKind, ModelError, TimeConditioning, UNet, UNetConfig};

/// `_diffusers_version` written into exported configs (the version the golden fixtures were
/// made with).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The `UNetConfig` keys [`DiffusersUNetConfig::from_unet_config`] maps; any other key must
/// keep its default value.
const MAPPED_KEYS: &[&str] = &[
    "in_channels",
    "out_channels",
    "block_out_channels",
    "base_channels",
    "channel_mult",
    "max_channels",
    "layers_per_block",
    "attention",
    "up_attention",
    "mid_attention",
    "mid_attention_norm",
    "attn_norm_num_groups",
    "attention_head_dim",
    "norm_num_groups",
    "norm_eps",
    "time_embedding",
    "time_conditioning",
    "num_classes",
    "null_class",
    "dropout",
    "downsample_padding",
    "mid_block_scale_factor",
    "learned_variance",
    // How the weights started: no part of the architecture.
    "init",
];

/// The `time_embedding` keys that are mapped (`max_period` and `sinusoid_dim` only at the
/// values diffusers hard-codes).
const MAPPED_TIME_KEYS: &[&str] = &[
    "flip_sin_to_cos",
    "freq_shift",
    "max_period",
    "sinusoid_dim",
    "dim",
];

/// diffusers' `get_timestep_embedding` period, fixed in `UNet2DModel`.
const DIFFUSERS_MAX_PERIOD: f64 = 10_000.0;

fn not_exportable(
    key: impl Into<String>,
    value: impl ToString,
    reason: impl Into<String>,
) -> ModelError {
    ModelError::NotExportable {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn kind_name(kind: AttentionKind) -> &'static str {
    match kind {
        AttentionKind::None => "none",
        AttentionKind::Full => "full",
        AttentionKind::Linear => "linear",
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Keys of `value` (a serialized config object) outside `mapped` whose value differs from
/// `default`'s: the first one, as `(key, value)`.
fn unmapped_change(value: &Value, default: &Value, mapped: &[&str]) -> Option<(String, Value)> {
    let (Value::Object(value), Value::Object(default)) = (value, default) else {
        return None;
    };
    value
        .iter()
        .find(|(key, v)| !mapped.contains(&key.as_str()) && default.get(*key) != Some(*v))
        .map(|(key, v)| (key.clone(), v.clone()))
}

/// A float as JSON, written as an integer when it is one (as diffusers' own defaults for
/// `freq_shift` and `mid_block_scale_factor` are).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

impl DiffusersUNetConfig {
    /// The diffusers `UNet2DModel` config equivalent to `native`, with `sample_size` (the
    /// training resolution, informative only) and `_class_name`/`_diffusers_version` metadata.
    ///
    /// Fails with [`ModelError::NotExportable`] naming the key and value for anything
    /// diffusers' `UNet2DModel` cannot express: linear attention (`attention[i]`,
    /// `up_attention[i]`, `mid_attention`), `null_class`, a `time_embedding.max_period` other
    /// than 10000, a `time_embedding.sinusoid_dim` other than the first level's channels, no
    /// middle-attention normalisation with additive time conditioning, and any other key (such
    /// as a conditioning route) set to a non-default value. `learned_variance` is exported as
    /// doubled `out_channels`.
    pub fn from_unet_config(native: &UNetConfig, sample_size: i64) -> Result<Self, ModelError> {
        native.validate()?;
        if sample_size < 1 {
            return Err(ModelError::invalid(
                "sample_size",
                sample_size,
                "must be >= 1",
            ));
        }
        // Keys this function does not know about (added later) must be at their defaults.
        let serialized = |c: &UNetConfig| serde_json::to_value(c).unwrap_or(Value::Null);
        let (value, default) = (serialized(native), serialized(&UNetConfig::default()));
        if let Some((key, v)) = unmapped_change(&value, &default, MAPPED_KEYS) {
            let reason = if key == "resample" {
                "is not exported (difflab reads and writes only diffusers' downsample_type and \
                 upsample_type conv)"
            } else {
                "has no diffusers equivalent"
            };
            return Err(not_exportable(key, compact(&v), reason));
        }
        if let Some((key, v)) = unmapped_change(
            &value["time_embedding"],
            &default["time_embedding"],
            MAPPED_TIME_KEYS,
        ) {
            return Err(not_exportable(
                format!("time_embedding.{key}"),
                compact(&v),
                "has no diffusers equivalent",
            ));
        }

        let channels = native.block_channels()?;
        let levels = channels.len();
        let te = &native.time_embedding;
        if te.max_period != DIFFUSERS_MAX_PERIOD {
            return Err(not_exportable(
                "time_embedding.max_period",
                te.max_period,
                "has no diffusers equivalent (UNet2DModel uses 10000)",
            ));
        }
        let sinusoid_dim = native.sinusoid_dim()?;
        if sinusoid_dim != channels[0] {
            return Err(not_exportable(
                "time_embedding.sinusoid_dim",
                sinusoid_dim,
                format!(
                    "has no diffusers equivalent (UNet2DModel uses block_out_channels[0] = {})",
                    channels[0]
                ),
            ));
        }
        if native.null_class {
            return Err(not_exportable(
                "null_class",
                true,
                "has no diffusers equivalent (UNet2DModel has no \"no label\" class row)",
            ));
        }

        let block = |kind: AttentionKind, key: String, plain: &str, attn: &str| match kind {
            AttentionKind::None => Ok(plain.to_string()),
            AttentionKind::Full => Ok(attn.to_string()),
            AttentionKind::Linear => Err(not_exportable(
                key,
                kind_name(kind),
                "has no diffusers equivalent",
            )),
        };
        let up_key = if native.up_attention.is_some() {
            "up_attention"
        } else {
            "attention"
        };
        let down_block_types = (0..levels)
            .map(|l| {
                block(
                    native.down_attention(l),
                    format!("attention[{l}]"),
                    "DownBlock2D",
                    "AttnDownBlock2D",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        // diffusers lists up blocks from the lowest resolution.
        let up_block_types = (0..levels)
            .rev()
            .map(|l| {
                block(
                    native.up_attention(l),
                    format!("{up_key}[{l}]"),
                    "UpBlock2D",
                    "AttnUpBlock2D",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        let add_attention = match native.mid_attention {
            AttentionKind::None => false,
            AttentionKind::Full => true,
            AttentionKind::Linear => {
                return Err(not_exportable(
                    "mid_attention",
                    "linear",
                    "has no diffusers equivalent",
                ));
            }
        };
        let scale_shift = native.time_conditioning == TimeConditioning::ScaleShift;
        // diffusers normalises the middle attention's input iff attn_norm_num_groups is set
        // or the time conditioning is additive ("default").
        let attn_norm_num_groups = if !add_attention {
            native.attn_norm_num_groups
        } else if native.mid_attention_norm {
            match (native.attn_norm_num_groups, scale_shift) {
                (Some(g), _) => Some(g),
                (None, true) => Some(native.norm_num_groups),
                (None, false) => None,
            }
        } else if scale_shift {
            None
        } else {
            return Err(not_exportable(
                "mid_attention_norm",
                false,
                "has no diffusers equivalent with time_conditioning = add (UNet2DModel \
                 normalises the middle attention's input unless resnet_time_scale_shift is \
                 scale_shift and attn_norm_num_groups is null)",
            ));
        };

        let layers_per_block = i64::try_from(native.layers_per_block).map_err(|_| {
            ModelError::invalid("layers_per_block", native.layers_per_block, "too large")
        })?;
        let metadata: BTreeMap<String, Value> = [
            ("_class_name".to_string(), json!("UNet2DModel")),
            ("_diffusers_version".to_string(), json!(DIFFUSERS_VERSION)),
        ]
        .into_iter()
        .collect();
        let config = Self {
            sample_size: Some(json!(sample_size)),
            in_channels: native.in_channels,
            out_channels: native.model_out_channels(),
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: te.dim,
            freq_shift: te.freq_shift,
            flip_sin_to_cos: te.flip_sin_to_cos,
            down_block_types,
            up_block_types,
            block_out_channels: channels,
            layers_per_block,
            mid_block_scale_factor: native.mid_block_scale_factor,
            downsample_padding: native.downsample_padding,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: native.dropout,
            act_fn: "silu".into(),
            attention_head_dim: native.attention_head_dim,
            norm_num_groups: Some(native.norm_num_groups),
            attn_norm_num_groups,
            norm_eps: native.norm_eps,
            resnet_time_scale_shift: if scale_shift {
                "scale_shift"
            } else {
                "default"
            }
            .into(),
            add_attention,
            class_embed_type: None,
            num_class_embeds: native.num_classes,
            num_train_timesteps: None,
            mid_block_type: Some("UNetMidBlock2D".into()),
            metadata,
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` object: every key diffusers' `UNet2DModel` reads (so diffusers fills
    /// in no defaults) plus the `_`-prefixed metadata, keys sorted as diffusers writes them.
    pub fn to_json(&self) -> Value {
        let mut map: BTreeMap<String, Value> = self.metadata.clone();
        if let Ok(Value::Object(fields)) = serde_json::to_value(self) {
            map.extend(fields);
        }
        // Integral values as integers, as in diffusers' own defaults.
        map.insert("freq_shift".into(), number(self.freq_shift));
        map.insert(
            "mid_block_scale_factor".into(),
            number(self.mid_block_scale_factor),
        );
        Value::Object(map.into_iter().collect::<Map<String, Value>>())
    }
}

/// Write `unet` (parameters in `vs`) as a diffusers `UNet2DModel` folder at `out_dir`:
/// `config.json` (see [`DiffusersUNetConfig::from_unet_config`]; `sample_size` is the
/// training resolution) and `diffusion_pytorch_model.safetensors` (every parameter as
/// contiguous little-endian f32 under its diffusers name).
///
/// The folder is built under a fresh temporary name (`<out_dir>.tmp-<pid>-<random>`, created
/// exclusively) and renamed into place, so `out_dir` is
/// either absent or complete. Fails if `out_dir` exists and is not an empty folder, if the
/// config is not expressible in diffusers terms ([`ModelError::NotExportable`] naming the key
/// and value), or if `vs` does not hold exactly the parameters of that diffusers model
/// (e.g. the UNet was built under a sub-path of the store).
pub fn export_diffusers_unet(
    unet: &UNet,
    vs: &VarStore,
    out_dir: &Path,
    sample_size: i64,
) -> Result<(), ModelError> {
    let config = DiffusersUNetConfig::from_unet_config(unet.config(), sample_size)?;
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    check_variables(&config, &variables)?;
    check_target(out_dir)?;

    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ModelError::Write { path, error }
    };
    let name = out_dir
        .file_name()
        .ok_or_else(|| ModelError::Write {
            path: out_dir.to_path_buf(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output folder needs a final path component",
            ),
        })?
        .to_string_lossy()
        .into_owned();
    if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_err(parent))?;
    }
    let tmp = difflab_files::create_temp_dir(&out_dir.with_file_name(&name))
        .map_err(write_err(out_dir))?;
    // An existing `out_dir` is an empty folder (checked above), which the rename replaces.
    let result = write_folder(&tmp, &config, &variables)
        .and_then(|()| fs::rename(&tmp, out_dir).map_err(write_err(out_dir)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// `out_dir` must be absent or an empty folder.
fn check_target(out_dir: &Path) -> Result<(), ModelError> {
    let refuse = |reason: &str| ModelError::Write {
        path: out_dir.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::AlreadyExists, reason.to_string()),
    };
    match fs::symlink_metadata(out_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ModelError::Write {
            path: out_dir.to_path_buf(),
            error,
        }),
        Ok(meta) if !meta.is_dir() => Err(refuse(
            "exists and is not a folder; refusing to overwrite it",
        )),
        Ok(_) => {
            let mut entries = fs::read_dir(out_dir).map_err(|error| ModelError::Write {
                path: out_dir.to_path_buf(),
                error,
            })?;
            if entries.next().is_some() {
                Err(refuse("exists and is not empty; refusing to overwrite it"))
            } else {
                Ok(())
            }
        }
    }
}

/// `variables` must have exactly the names and shapes of the model diffusers will build from
/// `config`, so that the exported folder loads.
fn check_variables(
    config: &DiffusersUNetConfig,
    variables: &BTreeMap<String, Tensor>,
) -> Result<(), ModelError> {
    let reference = VarStore::new(Device::Cpu);
    let _guard = tch::no_grad_guard();
    UNet::new(&reference.root(), &config.to_unet_config()?)?;
    let expected: BTreeMap<String, Vec<i64>> = reference
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect();
    let bad = |reason: String| ModelError::InvalidInput { what: "vs", reason };
    for (name, shape) in &expected {
        match variables.get(name) {
            None => {
                return Err(bad(format!(
                    "no variable `{name}` (shape {shape:?}) of diffusers' UNet2DModel; \
                     was the UNet built at the store's root?"
                )));
            }
            Some(t) if &t.size() != shape => {
                return Err(bad(format!(
                    "variable `{name}` has shape {:?}, diffusers' UNet2DModel expects {shape:?}",
                    t.size()
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((name, t)) = variables.iter().find(|(n, _)| !expected.contains_key(*n)) {
        return Err(bad(format!(
            "variable `{name}` (shape {:?}) is not a parameter of diffusers' UNet2DModel",
            t.size()
        )));
    }
    Ok(())
}

fn write_folder(
    dir: &Path,
    config: &DiffusersUNetConfig,
    variables: &BTreeMap<String, Tensor>,
) -> Result<(), ModelError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_json()).map_err(|e| ModelError::Write {
        path: config_path.clone(),
        error: std::io::Error::other(e),
    })? + "\n";
    write_synced(&config_path, |w| w.write_all(text.as_bytes()))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    write_safetensors_f32(&weights_path, variables)
}

/// Create `path`, fill it with `fill` through a buffer and flush it to disk.
fn write_synced(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<(), ModelError> {
    let result = (|| {
        let mut writer = BufWriter::new(fs::File::create(path)?);
        fill(&mut writer)?;
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    result.map_err(|error| ModelError::Write {
        path: PathBuf::from(path),
        error,
    })
}

/// Write `tensors` to a safetensors file as f32, laid out as Python's `safetensors` does for
/// an all-f32 state dict: `{"__metadata__":{"format":"pt"}, name: {dtype, shape,
/// data_offsets}, …}` in name order, the header padded with spaces to a multiple of 8 bytes,
/// then the little-endian data in the same order.
fn write_safetensors_f32(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), ModelError> {
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let size = tensor.size();
        let bytes = 4 * size.iter().product::<i64>() as usize;
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":{}}}",
            json!(name),
            json!(size),
            json!([offset, offset + bytes])
        ));
        offset += bytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let _guard = tch::no_grad_guard();
    write_synced(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for tensor in tensors.values() {
            let t = tensor
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let numel = t.numel();
            let mut data = vec![0f32; numel];
            t.f_copy_data(&mut data, numel)
                .map_err(std::io::Error::other)?;
            let mut bytes = Vec::with_capacity(4 * numel);
            for x in data {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&bytes)?;
        }
        Ok(())
    })
}
