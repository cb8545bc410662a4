//! diffusers' `UNet2DModel` `config.json`, parsed, validated and converted to [`UNetConfig`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AttentionKind, ModelError, TimeConditioning, TimeEmbeddingConfig, UNetConfig};

/// The keys of a diffusers `UNet2DModel` config, with diffusers' defaults for absent keys.
/// Keys starting with `_` (`_class_name`, `_diffusers_version`, …) are kept in `metadata`;
/// any other unknown key is an error, since ignoring it could silently change the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffusersUNetConfig {
    /// Training resolution: an integer or `[height, width]` (informative only).
    pub sample_size: Option<Value>,
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Map inputs by `2x − 1` first (unsupported when true).
    pub center_input_sample: bool,
    /// `positional` (supported), `fourier`, `learned`.
    pub time_embedding_type: String,
    /// Width of the time embedding; default 4 × `block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
    /// Frequency shift of the sinusoidal code.
    pub freq_shift: f64,
    /// `[cos, sin]` order of the sinusoidal code.
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D` or `AttnDownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UpBlock2D` or `AttnUpBlock2D` per level, lowest resolution first.
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<i64>,
    /// Residual blocks per encoder level.
    pub layers_per_block: i64,
    /// Output scale of the middle block.
    pub mid_block_scale_factor: f64,
    /// Padding of the downsampling convolution.
    pub downsample_padding: i64,
    /// `conv` (supported) or `resnet`.
    pub downsample_type: String,
    /// `conv` (supported) or `resnet`.
    pub upsample_type: String,
    /// Dropout in residual blocks.
    pub dropout: f64,
    /// `silu`/`swish` (supported), others.
    pub act_fn: String,
    /// Width of one attention head; `null`: one head per block.
    pub attention_head_dim: Option<i64>,
    /// GroupNorm groups.
    pub norm_num_groups: Option<i64>,
    /// Groups of the middle attention's GroupNorm.
    pub attn_norm_num_groups: Option<i64>,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// `default` (add) or `scale_shift` (AdaGN).
    pub resnet_time_scale_shift: String,
    /// Attention in the middle block.
    pub add_attention: bool,
    /// `null` (supported: a learned embedding table when `num_class_embeds` is set),
    /// `timestep`, `identity`.
    pub class_embed_type: Option<String>,
    /// Number of classes.
    pub num_class_embeds: Option<i64>,
    /// Used only by the `learned` time embedding.
    pub num_train_timesteps: Option<i64>,
    /// `UNetMidBlock2D` (supported).
    pub mid_block_type: Option<String>,
    /// Keys starting with `_`, as found.
    #[serde(skip)]
    pub metadata: BTreeMap<String, Value>,
}

impl Default for DiffusersUNetConfig {
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: s("positional"),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(s)
            .to_vec(),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(s)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: s("conv"),
            upsample_type: s("conv"),
            dropout: 0.0,
            act_fn: s("silu"),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: s("default"),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            mid_block_type: Some(s("UNetMidBlock2D")),
            metadata: BTreeMap::new(),
        }
    }
}

const KNOWN_KEYS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
    "mid_block_type",
];

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "?".into())
}

fn require(key: &str, value: &str, allowed: &[&str]) -> Result<(), ModelError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ModelError::unsupported(
            key,
            json(&value),
            allowed.join(", "),
        ))
    }
}

impl DiffusersUNetConfig {
    /// Read and validate `config.json` at `path`; errors name the file, key and value.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config = Self::from_json(value).map_err(|e| e.in_file(path))?;
        config.validate().map_err(|e| e.in_file(path))?;
        Ok(config)
    }

    /// Parse a config object (not yet validated: see [`DiffusersUNetConfig::validate`]).
    /// Unknown keys not starting with `_` and values of the wrong type are errors naming the key.
    pub fn from_json(value: Value) -> Result<Self, ModelError> {
        let Value::Object(map) = value else {
            return Err(ModelError::invalid(
                "config",
                json(&value),
                "expected a JSON object",
            ));
        };
        let mut metadata = BTreeMap::new();
        let mut keys = serde_json::Map::new();
        for (key, v) in map {
            if key.starts_with('_') {
                metadata.insert(key, v);
            } else if KNOWN_KEYS.contains(&key.as_str()) {
                keys.insert(key, v);
            } else {
                return Err(ModelError::unsupported(
                    key,
                    json(&v),
                    "the keys of diffusers' UNet2DModel config",
                ));
            }
        }
        let mut config: Self = match serde_json::from_value(Value::Object(keys.clone())) {
            Ok(config) => config,
            Err(whole) => {
                // Find the key whose value does not fit, to name it.
                for (key, v) in keys {
                    let single = Value::Object([(key.clone(), v.clone())].into_iter().collect());
                    if let Err(e) = serde_json::from_value::<Self>(single) {
                        return Err(ModelError::invalid(key, json(&v), e.to_string()));
                    }
                }
                return Err(ModelError::invalid("config", "?", whole.to_string()));
            }
        };
        config.metadata = metadata;
        Ok(config)
    }

    /// Check that every value is one this crate implements; the error names key and value.
    pub fn validate(&self) -> Result<(), ModelError> {
        require(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
        )?;
        if self.center_input_sample {
            return Err(ModelError::unsupported(
                "center_input_sample",
                true,
                "false",
            ));
        }
        if let Some(kind) = &self.class_embed_type {
            return Err(ModelError::unsupported(
                "class_embed_type",
                json(kind),
                "null (a learned table of num_class_embeds rows)",
            ));
        }
        require(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default", "scale_shift"],
        )?;
        require("downsample_type", &self.downsample_type, &["conv"])?;
        require("upsample_type", &self.upsample_type, &["conv"])?;
        require("act_fn", &self.act_fn, &["silu", "swish"])?;
        match &self.mid_block_type {
            Some(t) => require("mid_block_type", t, &["UNetMidBlock2D"])?,
            None => {
                return Err(ModelError::unsupported(
                    "mid_block_type",
                    "null",
                    "UNetMidBlock2D",
                ));
            }
        }
        if self.norm_num_groups.is_none() {
            return Err(ModelError::unsupported(
                "norm_num_groups",
                "null",
                "an integer",
            ));
        }
        for (i, t) in self.down_block_types.iter().enumerate() {
            require(
                &format!("down_block_types[{i}]"),
                t,
                &["DownBlock2D", "AttnDownBlock2D"],
            )?;
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            require(
                &format!("up_block_types[{i}]"),
                t,
                &["UpBlock2D", "AttnUpBlock2D"],
            )?;
        }
        let levels = self.block_out_channels.len();
        for (key, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != levels {
                return Err(ModelError::invalid(
                    key,
                    len,
                    format!("need one entry per block_out_channels entry ({levels})"),
                ));
            }
        }
        if self.layers_per_block < 1 {
            return Err(ModelError::invalid(
                "layers_per_block",
                self.layers_per_block,
                "must be >= 1",
            ));
        }
        self.to_unet_config_unchecked().validate()
    }

    /// Training resolution `(height, width)` from `sample_size`, if given.
    pub fn sample_size(&self) -> Option<(i64, i64)> {
        match self.sample_size.as_ref()? {
            Value::Number(n) => n.as_i64().map(|s| (s, s)),
            Value::Array(a) if a.len() == 2 => Some((a[0].as_i64()?, a[1].as_i64()?)),
            _ => None,
        }
    }

    /// The equivalent native configuration (after [`DiffusersUNetConfig::validate`]).
    pub fn to_unet_config(&self) -> Result<UNetConfig, ModelError> {
        self.validate()?;
        Ok(self.to_unet_config_unchecked())
    }

    fn to_unet_config_unchecked(&self) -> UNetConfig {
        let levels = self.block_out_channels.len();
        let attn = |t: &String| {
            if t.starts_with("Attn") {
                AttentionKind::Full
            } else {
                AttentionKind::None
            }
        };
        let down: Vec<AttentionKind> = self.down_block_types.iter().map(attn).collect();
        // up_block_types run from the lowest resolution; native config indexes by level.
        let up: Vec<AttentionKind> = self.up_block_types.iter().rev().map(attn).collect();
        let scale_shift = self.resnet_time_scale_shift == "scale_shift";
        // diffusers' middle attention normalises its input only with explicit
        // attn_norm_num_groups or with the default (additive) time conditioning.
        let mid_attention_norm = self.attn_norm_num_groups.is_some() || !scale_shift;
        UNetConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            block_out_channels: Some(self.block_out_channels.clone()),
            base_channels: None,
            channel_mult: None,
            max_channels: None,
            layers_per_block: usize::try_from(self.layers_per_block).unwrap_or(0),
            up_attention: (up != down && up.len() == levels).then_some(up),
            attention: down,
            mid_attention: if self.add_attention {
                AttentionKind::Full
            } else {
                AttentionKind::None
            },
            mid_attention_norm,
            attn_norm_num_groups: self.attn_norm_num_groups,
            attention_head_dim: self.attention_head_dim,
            norm_num_groups: self.norm_num_groups.unwrap_or(32),
            norm_eps: self.norm_eps,
            time_embedding: TimeEmbeddingConfig {
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
                max_period: 10_000.0,
                sinusoid_dim: None,
                dim: self.time_embedding_dim,
            },
            time_conditioning: if scale_shift {
                TimeConditioning::ScaleShift
            } else {
                TimeConditioning::Add
            },
            num_classes: self.num_class_embeds,
            null_class: false,
            dropout: self.dropout,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            learned_variance: false,
            ..UNetConfig::default()
        }
    }
}
