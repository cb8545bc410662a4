//! Whether a job fits in memory, checked before anything is allocated: a config or a flag
//! that asks for more than the machine has gets an error saying how much, instead of an abort
//! inside the allocator. The estimates are lower bounds (the weights of the convolutions and
//! linear layers alone; the activations a forward pass must hold at once), so a job that is
//! refused could never have run, and a job that fits is never refused.

use crate::ModelConfig;

/// Bytes of memory available now (Linux's `MemAvailable`); `None` where unknown.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A lower bound on the parameters of `model`: its convolutions' and linear layers' weights,
/// as floats (`f64`, so an absurd config cannot overflow).
pub fn parameter_floor(model: &ModelConfig) -> f64 {
    let unet = |u: &difflab_models::UNetConfig| {
        let layers = u.layers_per_block as f64;
        u.block_channels()
            .unwrap_or_default()
            .iter()
            .map(|&c| {
                let c = c as f64;
                // Each level's down resnets alone: two 3×3 convolutions of c → c channels.
                layers * 2.0 * 9.0 * c * c
            })
            .sum::<f64>()
    };
    match model {
        ModelConfig::Unet(u) => unet(u),
        ModelConfig::SrUnet(sr) => unet(&sr.unet),
        ModelConfig::Mlp(m) => m.layers as f64 * (m.hidden as f64).powi(2),
    }
}

/// A lower bound on the floats one image's pass through `model` at `resolution` holds at
/// once. In `training`, autograd keeps at least four tensors per resnet (the inputs of its two
/// normalisations and two convolutions) for the backward pass, `2·layers_per_block + 1`
/// resnets per level (down and up); sampling holds at least two per level at a time.
pub fn activation_floor(model: &ModelConfig, resolution: i64, training: bool) -> f64 {
    let unet = |u: &difflab_models::UNetConfig| {
        let mut side = resolution as f64;
        let mut floats = 0.0;
        for c in u.block_channels().unwrap_or_default() {
            floats += c as f64 * side * side;
            side = (side / 2.0).max(1.0);
        }
        let held = match training {
            true => 4.0 * (2.0 * u.layers_per_block as f64 + 1.0),
            false => 2.0,
        };
        floats * held
    };
    match model {
        ModelConfig::Unet(u) => unet(u),
        ModelConfig::SrUnet(sr) => unet(&sr.unet),
        ModelConfig::Mlp(m) => m.hidden as f64 * if training { m.layers as f64 } else { 1.0 },
    }
}

/// An error naming `what` when `bytes` is more than the memory available now.
pub fn check_fits(what: &str, bytes: f64) -> Result<(), String> {
    let gib = |b: f64| b / (1u64 << 30) as f64;
    match available_bytes() {
        Some(free) if bytes > free as f64 => Err(format!(
            "{what} needs at least {:.1} GiB of memory and {:.1} GiB are available; make it smaller",
            gib(bytes),
            gib(free as f64)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floors_are_below_what_a_real_model_has_and_absurd_asks_are_refused() {
        let config: ModelConfig = serde_saphyr::from_str(
            "kind: unet\nin_channels: 3\nout_channels: 3\nblock_out_channels: [32, 64]\nlayers_per_block: 2\nnorm_num_groups: 8\nattention: [none, none]\n",
        )
        .unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let real = crate::Network::build(&vs.root(), &config)
            .unwrap()
            .num_parameters();
        let floor = parameter_floor(&config);
        assert!(
            floor > 0.1 * real as f64 && floor < real as f64,
            "{floor} vs {real}"
        );
        assert!(check_fits("a job", 1e3).is_ok());
        if available_bytes().is_some() {
            let err = check_fits("training x", 1e18).unwrap_err();
            assert!(err.contains("training x") && err.contains("GiB"), "{err}");
        }
    }
}
