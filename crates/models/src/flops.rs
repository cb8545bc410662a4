//! Analytic FLOP counts of the networks, from their configs alone.
//!
//! Convention (the one MLPerf and most papers use): one multiply-accumulate is 2 FLOPs; only
//! convolutions, linear layers and the two attention matmuls (`Q Kᵀ` and `A V`, or `Kᵀ V` and
//! `Q (Kᵀ V)` for linear attention) are counted — normalisations, activations, softmax,
//! biases, resampling and element-wise additions are not (they are a few percent at most).
//! The figures are for the forward pass of one example; a training step (forward, backward
//! for inputs and weights) is taken as 3× the forward count.

use crate::{AttentionKind, MlpConfig, ModelError, Resample, TimeConditioning, UNetConfig};

/// FLOPs of a `k`×`k` convolution `c_in` → `c_out` producing `h`×`w` outputs.
pub fn conv_flops(c_in: i64, c_out: i64, k: i64, h: i64, w: i64) -> u64 {
    (2 * c_in * c_out * k * k * h * w) as u64
}

/// FLOPs of a linear layer `d_in` → `d_out` applied to `tokens` rows.
pub fn linear_flops(d_in: i64, d_out: i64, tokens: i64) -> u64 {
    (2 * d_in * d_out * tokens) as u64
}

/// FLOPs of one spatial attention layer over `n` positions of `channels` channels split into
/// heads of width `head_dim`: the four projections plus the two attention matmuls.
pub fn attention_flops(kind: AttentionKind, channels: i64, head_dim: i64, n: i64) -> u64 {
    let heads = (channels / head_dim.max(1)).max(1);
    let inner = heads * head_dim;
    let projections = 3 * linear_flops(channels, inner, n) + linear_flops(inner, channels, n);
    let matmuls = match kind {
        AttentionKind::None => return 0,
        // Q Kᵀ: [n, d]·[d, n] and A V: [n, n]·[n, d], per head.
        AttentionKind::Full => (2 * 2 * n * n * head_dim * heads) as u64,
        // Kᵀ V: [d, n]·[n, d] and Q (Kᵀ V): [n, d]·[d, d], per head.
        AttentionKind::Linear => (2 * 2 * n * head_dim * head_dim * heads) as u64,
    };
    projections + matmuls
}

/// FLOPs of one residual block at output resolution `h`×`w` (`resample_before`: the block
/// resamples between its norm and `conv1`, so both convolutions run at `h`×`w`).
fn resnet_flops(
    c_in: i64,
    c_out: i64,
    temb: i64,
    conditioning: TimeConditioning,
    h: i64,
    w: i64,
) -> u64 {
    let proj = match conditioning {
        TimeConditioning::Add => c_out,
        TimeConditioning::ScaleShift => 2 * c_out,
    };
    let shortcut = if c_in != c_out {
        conv_flops(c_in, c_out, 1, h, w)
    } else {
        0
    };
    conv_flops(c_in, c_out, 3, h, w)
        + conv_flops(c_out, c_out, 3, h, w)
        + linear_flops(temb, proj, 1)
        + shortcut
}

/// Forward FLOPs of the [`crate::UNet`] built from `config` for one `height`×`width` input,
/// following the architecture of `UNet::new` block by block (see the module docs for what
/// is counted).
pub fn unet_forward_flops(config: &UNetConfig, height: i64, width: i64) -> Result<u64, ModelError> {
    config.validate()?;
    let channels = config.block_channels()?;
    let levels = channels.len();
    let temb = config.time_embed_dim()?;
    let layers = config.layers_per_block;
    let cond = config.time_conditioning;
    let attn = |kind: AttentionKind, c: i64, h: i64, w: i64| {
        attention_flops(kind, c, config.head_dim(c), h * w)
    };
    let mut total = 0u64;

    // Embeddings (per example): time MLP and the optional label / noise-level MLPs.
    total += linear_flops(config.sinusoid_dim()?, temb, 1) + linear_flops(temb, temb, 1);
    if let Some(d) = config.label_dim {
        total += linear_flops(d, temb, 1) + linear_flops(temb, temb, 1);
    }
    if let Some(d) = config.noise_level_sinusoid_dim()? {
        total += linear_flops(d, temb, 1) + linear_flops(temb, temb, 1);
    }

    let (mut h, mut w) = (height, width);
    total += conv_flops(config.conv_in_channels(), channels[0], 3, h, w);

    // Encoder.
    let mut skip_widths = vec![channels[0]];
    let mut c_in = channels[0];
    for (level, &c) in channels.iter().enumerate() {
        for i in 0..layers {
            let ci = if i == 0 { c_in } else { c };
            total += resnet_flops(ci, c, temb, cond, h, w);
            total += attn(config.down_attention(level), c, h, w);
            skip_widths.push(c);
        }
        if level + 1 < levels {
            let (h2, w2) = (h / 2, w / 2);
            total += match config.resample {
                Resample::Conv => conv_flops(c, c, 3, h2, w2),
                Resample::Resnet => resnet_flops(c, c, temb, cond, h2, w2),
            };
            (h, w) = (h2, w2);
            skip_widths.push(c);
        }
        c_in = c;
    }

    // Middle.
    let c_mid = channels[levels - 1];
    total += 2 * resnet_flops(c_mid, c_mid, temb, cond, h, w);
    total += attn(config.mid_attention, c_mid, h, w);

    // Decoder.
    let mut prev = c_mid;
    for i in 0..levels {
        let level = levels - 1 - i;
        let c = channels[level];
        for j in 0..=layers {
            let skip = skip_widths.pop().unwrap_or(0);
            let ci = if j == 0 { prev } else { c };
            total += resnet_flops(ci + skip, c, temb, cond, h, w);
            total += attn(config.up_attention(level), c, h, w);
        }
        if let Some(d) = config.context_dim {
            total += linear_flops(d, c, 1);
        }
        if level > 0 {
            let (h2, w2) = (2 * h, 2 * w);
            total += match config.resample {
                Resample::Conv => conv_flops(c, c, 3, h2, w2),
                Resample::Resnet => resnet_flops(c, c, temb, cond, h2, w2),
            };
            (h, w) = (h2, w2);
        }
        prev = c;
    }

    total += conv_flops(channels[0], config.model_out_channels(), 3, h, w);
    Ok(total)
}

/// Forward FLOPs of the [`crate::MlpDenoiser`] built from `config` for one example.
pub fn mlp_forward_flops(config: &MlpConfig) -> u64 {
    let (d, hidden, temb) = (config.data_dim, config.hidden, config.time_embed_dim());
    let layers = config.layers as u64;
    linear_flops(config.sinusoid_dim(), temb, 1)
        + linear_flops(temb, temb, 1)
        + linear_flops(d, hidden, 1)
        + layers * (linear_flops(hidden, hidden, 1) + linear_flops(temb, hidden, 1))
        + linear_flops(hidden, d, 1)
}

/// FLOPs of one training step per example: forward + backward ≈ 3× forward (the backward
/// computes a gradient for both the inputs and the weights of every layer).
pub fn training_flops(forward: u64) -> u64 {
    3 * forward
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_unet_matches_a_hand_count() {
        // One level of 4 channels: no resampling; 1 layer per block; full attention in the
        // middle with one head of width 4; time embedding 16 from a sinusoid of 4.
        let config: UNetConfig = serde_json::from_str(
            r#"{"in_channels": 3, "out_channels": 3, "block_out_channels": [4],
                "layers_per_block": 1, "norm_num_groups": 2, "mid_attention": "full"}"#,
        )
        .expect("config");
        let (h, w) = (8u64, 8u64);
        let n = h * w;
        let time_mlp = 2 * (4 * 16 + 16 * 16);
        let conv_in = 2 * 3 * 4 * 9 * n;
        let resnet = 2 * 2 * (4 * 4 * 9 * n) + 2 * 16 * 4; // conv1 + conv2 + time projection
        let down = resnet;
        let mid_attention = 4 * 2 * 4 * 4 * n + 2 * 2 * n * n * 4;
        let mid = 2 * resnet + mid_attention;
        // Decoder: two resnets reading 4 + 4 channels, each with a 1×1 shortcut 8 → 4.
        let up_resnet = 2 * (8 * 4 * 9 * n) + 2 * (4 * 4 * 9 * n) + 2 * 16 * 4 + 2 * 8 * 4 * n;
        let up = 2 * up_resnet;
        let conv_out = 2 * 4 * 3 * 9 * n;
        let hand = time_mlp + conv_in + down + mid + up + conv_out;
        assert_eq!(unet_forward_flops(&config, 8, 8).expect("flops"), hand);
        assert_eq!(training_flops(hand), 3 * hand);
    }

    #[test]
    fn resolution_scales_convolutions_quadratically() {
        let config: UNetConfig = serde_json::from_str(
            r#"{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                "mid_attention": "none"}"#,
        )
        .expect("config");
        let small = unet_forward_flops(&config, 8, 8).expect("flops") as f64;
        let large = unet_forward_flops(&config, 16, 16).expect("flops") as f64;
        // Only the per-example time MLPs do not scale with the area.
        assert!((large / small - 4.0).abs() < 0.05, "{}", large / small);
    }

    #[test]
    fn mlp_matches_a_hand_count() {
        let config = MlpConfig {
            data_dim: 2,
            hidden: 8,
            layers: 2,
            ..MlpConfig::default()
        };
        let hand = 2 * (8 * 8 + 8 * 8) + 2 * 2 * 8 + 2 * (2 * (8 * 8 + 8 * 8)) + 2 * 8 * 2;
        assert_eq!(mlp_forward_flops(&config), hand);
    }
}
