//! Parameters start as PyTorch's `torch.nn` modules start them: each module type's bounds and
//! standard deviations against PyTorch's formulas, every parameter of whole networks, and the
//! `zero_out` scheme.

use difflab_models::init::{self, bias_bound, kaiming_uniform_bound};
use difflab_models::{InitScheme, MlpConfig, MlpDenoiser, UNet, UNetConfig, UNetInputs};
use tch::{Device, Kind, Tensor, nn};

/// The tests here seed libtorch's one global generator and draw: one at a time.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// `(max |x|, std, mean)` of a tensor.
fn stats(t: &Tensor) -> (f64, f64, f64) {
    let t = t.to_kind(Kind::Double);
    (
        t.abs().max().double_value(&[]),
        t.std(false).double_value(&[]),
        t.mean(Kind::Double).double_value(&[]),
    )
}

/// Draws of U(−b, b): inside the bound, reaching close to it, std b/√3, mean 0 (to within
/// sampling error for `n` draws).
fn assert_uniform(t: &Tensor, b: f64, what: &str) {
    let n = t.numel() as f64;
    let (max, std, mean) = stats(t);
    assert!(max <= b, "{what}: max {max} > bound {b}");
    assert!(
        max >= b * (1.0 - 20.0 / n),
        "{what}: max {max} far below bound {b}"
    );
    let want = b / 3f64.sqrt();
    assert!(
        (std - want).abs() < 5.0 * want / n.sqrt(),
        "{what}: std {std}, U(-b, b) has {want}"
    );
    assert!(mean.abs() < 5.0 * want / n.sqrt(), "{what}: mean {mean}");
}

/// `nn.Linear`: weight and bias U(−1/√in, 1/√in) (`kaiming_uniform_(a=√5)`), not tch's
/// √6/√in.
#[test]
fn linear_layers_start_as_torch_nn_linear() {
    let _rng = seeded(0);
    for (i, o) in [(64, 512), (300, 200), (1024, 128)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = init::linear(vs.root(), i, o);
        assert_eq!(layer.ws.size(), [o, i]);
        assert_uniform(
            &layer.ws,
            1.0 / (i as f64).sqrt(),
            &format!("linear {i}->{o} weight"),
        );
        let bias = layer.bs.as_ref().expect("bias");
        assert!(stats(bias).0 <= bias_bound(i), "linear {i}->{o} bias");
        assert!(layer.ws.requires_grad() && bias.requires_grad());
    }
}

/// `nn.Conv2d`: weight U(−b, b), b = 1/√(in·k·k), and the bias with the same bound (tch's
/// conv biases start at zero).
#[test]
fn convolutions_start_as_torch_nn_conv2d() {
    let _rng = seeded(1);
    for (c_in, c_out, k) in [(32, 64, 3), (64, 128, 1), (16, 200, 3)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = init::conv2d(vs.root(), c_in, c_out, k, 1, k / 2);
        let fan_in = c_in * k * k;
        assert_eq!(conv.ws.size(), [c_out, c_in, k, k]);
        assert_uniform(
            &conv.ws,
            kaiming_uniform_bound(fan_in),
            &format!("conv {c_in}x{k}x{k}"),
        );
        let bias = conv.bs.as_ref().expect("bias");
        let (max, std, _) = stats(bias);
        assert!(
            max <= bias_bound(fan_in) && std > 0.0,
            "conv bias: max {max}, std {std}"
        );
    }
}

/// `nn.Embedding` N(0, 1); `nn.GroupNorm` weight 1, bias 0.
#[test]
fn embeddings_and_norms_start_as_torch_nn() {
    let _rng = seeded(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let table = init::embedding(vs.root() / "e", 100, 400);
    let (_, std, mean) = stats(&table.ws);
    assert!(
        (std - 1.0).abs() < 0.02 && mean.abs() < 0.01,
        "N(0, 1): std {std}, mean {mean}"
    );
    let norm = init::group_norm(vs.root() / "n", 4, 32, 1e-5);
    let ones = norm.ws.as_ref().expect("weight");
    assert!(ones.equal(&Tensor::ones([32], (Kind::Float, Device::Cpu))));
    assert_eq!(stats(norm.bs.as_ref().expect("bias")).0, 0.0);
}

/// The same seed gives the same weights on every device: parameters are drawn on the CPU.
#[test]
fn draws_come_from_the_cpu_generator() {
    let vs = nn::VarStore::new(Device::Cpu);
    let rng = seeded(5);
    let layer = init::linear(vs.root(), 7, 3);
    tch::manual_seed(5);
    let w = Tensor::zeros([3, 7], (Kind::Float, Device::Cpu));
    let _ = w
        .shallow_clone()
        .uniform_(-kaiming_uniform_bound(7), kaiming_uniform_bound(7));
    drop(rng);
    assert!(
        layer.ws.equal(&w),
        "weight drawn first, by uniform_, as PyTorch's reset_parameters"
    );
}

/// The fan-in of a parameter from its shape, as PyTorch computes it.
fn fan_in(shape: &[i64]) -> i64 {
    shape[1..].iter().product()
}

fn recipe_unet(init: InitScheme) -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: Some(vec![32, 64, 64]),
        layers_per_block: 1,
        attention: vec![
            Default::default(),
            Default::default(),
            difflab_models::AttentionKind::Full,
        ],
        norm_num_groups: 8,
        num_classes: Some(10),
        init,
        ..UNetConfig::default()
    }
}

/// Every parameter of a whole UNet (and of the MLP) starts as `torch.nn` starts it: each
/// convolution and linear weight and bias within 1/√fan_in and filling that range, norms at
/// 1 and 0, the class table N(0, 1). A module built with tch's defaults anywhere fails this.
#[test]
fn every_parameter_of_whole_networks_follows_pytorch() {
    let rng = seeded(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _unet = UNet::new(&vs.root(), &recipe_unet(InitScheme::Pytorch)).unwrap();
    let mlp_vs = nn::VarStore::new(Device::Cpu);
    let _mlp = MlpDenoiser::new(&mlp_vs.root(), &MlpConfig::default()).unwrap();
    drop(rng);
    let mut checked = 0;
    for store in [&vs, &mlp_vs] {
        checked += check_store(store);
    }
    assert!(checked > 100, "{checked} parameters");
}

/// The checks of [`every_parameter_of_whole_networks_follows_pytorch`] on one store; returns
/// the number of parameters checked.
fn check_store(store: &nn::VarStore) -> usize {
    let vars: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    let mut weights = std::collections::HashMap::new();
    for (name, t) in &vars {
        if name.ends_with(".weight") {
            weights.insert(name.trim_end_matches(".weight").to_string(), t.size());
        }
    }
    let mut checked = 0;
    for (name, t) in &vars {
        let (max, std, _) = stats(t);
        let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
        let Some(weight_shape) = weights.get(layer) else {
            panic!("{name}: no weight beside it");
        };
        if name.contains("norm") {
            let want = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            assert!(t.eq(want).all().int64_value(&[]) == 1, "{name}: not {want}");
        } else if name == "class_embedding.weight" {
            assert!((std - 1.0).abs() < 0.05, "{name}: std {std}");
        } else {
            let b = 1.0 / (fan_in(weight_shape) as f64).sqrt();
            assert!(
                max <= b * (1.0 + 1e-12),
                "{name}: max {max} > 1/sqrt(fan_in) = {b}"
            );
            if t.numel() >= 256 {
                assert!(max > 0.9 * b, "{name}: max {max}, bound {b}");
                let want = b / 3f64.sqrt();
                assert!(
                    (std - want).abs() < 0.2 * want,
                    "{name}: std {std} vs {want}"
                );
            }
        }
        checked += 1;
    }
    checked
}

/// `zero_out`: the same draws, then every residual branch's last layer and the output layer
/// zero, so the network outputs exactly 0 at first and every residual block is its shortcut.
#[test]
fn zero_out_zeroes_the_branch_outputs_and_the_output() {
    let build = |init| {
        let _rng = seeded(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let unet = UNet::new(&vs.root(), &recipe_unet(init)).unwrap();
        (vs, unet)
    };
    let (plain_vs, _) = build(InitScheme::Pytorch);
    let (vs, unet) = build(InitScheme::ZeroOut);
    let plain = plain_vs.variables();
    let mut zeroed = 0;
    for (name, t) in vs.variables() {
        let is_out = name.contains(".conv2.")
            || name.contains(".to_out.0.")
            || name.starts_with("conv_out.");
        if is_out {
            assert_eq!(stats(&t).0, 0.0, "{name} is not zero");
            zeroed += 1;
        } else {
            assert!(
                t.equal(&plain[&name]),
                "{name}: the other draws are unchanged"
            );
        }
    }
    // Weight and bias of 11 resnets' conv2 (3 encoder, 2 middle, 6 decoder), conv_out, and
    // 4 attentions' to_out.0 (encoder, middle, 2 decoder).
    assert_eq!(zeroed, 2 * (11 + 1 + 4), "zeroed tensors");
    let x = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 700]);
    let labels = Tensor::from_slice(&[1i64, 9]);
    let out = unet.forward(&x, &t, &UNetInputs::classes(Some(&labels)), false);
    assert_eq!(stats(&out).0, 0.0, "the output starts at 0");

    let rng = seeded(4);
    let mlp_vs = nn::VarStore::new(Device::Cpu);
    let config = MlpConfig {
        init: InitScheme::ZeroOut,
        ..MlpConfig::default()
    };
    let mlp = MlpDenoiser::new(&mlp_vs.root(), &config).unwrap();
    drop(rng);
    let y = mlp.forward(
        &Tensor::randn([4, 2], (Kind::Float, Device::Cpu)),
        &Tensor::from_slice(&[5i64]),
    );
    assert_eq!(stats(&y).0, 0.0, "the MLP's output starts at 0");
}
