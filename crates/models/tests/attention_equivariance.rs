//! Spatial self-attention has no positional information: permuting the H·W tokens of its
//! input permutes its output the same way, for full and linear attention alike.

mod common;

use common::max_diff;
use difflab_models::{AttentionConfig, AttentionKind, SpatialAttention};
use tch::{Device, Kind, Tensor, nn};

/// `x` (`[B, C, H, W]`) with its flattened spatial tokens reordered by `perm` (`[H·W]`).
fn permute_tokens(x: &Tensor, perm: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("4-D");
    x.reshape([b, c, h * w])
        .index_select(2, perm)
        .reshape([b, c, h, w])
}

#[test]
fn attention_is_permutation_equivariant_over_tokens() {
    for kind in [AttentionKind::Full, AttentionKind::Linear] {
        for norm_groups in [Some(2), None] {
            tch::manual_seed(11);
            let vs = nn::VarStore::new(Device::Cpu);
            let attn = SpatialAttention::new(
                &vs.root(),
                &AttentionConfig {
                    channels: 8,
                    head_dim: 4,
                    norm_groups,
                    eps: 1e-5,
                    rescale_output_factor: 1.0,
                    kind,
                },
            )
            .expect("attention");
            let x = Tensor::randn([2, 8, 4, 6], (Kind::Float, Device::Cpu));
            let perm = Tensor::randperm(24, (Kind::Int64, Device::Cpu));
            let (out, out_of_permuted) =
                tch::no_grad(|| (attn.forward(&x), attn.forward(&permute_tokens(&x, &perm))));
            let diff = max_diff(&out_of_permuted, &permute_tokens(&out, &perm));
            assert!(diff < 1e-5, "{kind:?} norm {norm_groups:?}: diff {diff:e}");
            // The layer does mix tokens: a token's output depends on the others.
            let y = x.copy();
            let _ = y.narrow(3, 0, 1).narrow(2, 0, 1).fill_(5.0);
            let changed = tch::no_grad(|| attn.forward(&y));
            let far = |t: &Tensor| t.narrow(2, 3, 1).narrow(3, 5, 1);
            assert!(
                max_diff(&far(&changed), &far(&out)) > 1e-7,
                "{kind:?}: tokens do not interact"
            );
        }
    }
}
