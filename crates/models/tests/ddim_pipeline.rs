//! End to end: the `uncond` fixture sampled with difflab's DDIM reproduces the images of
//! diffusers' `DDIMPipeline` (seed 0, 20 steps, default `DDIMScheduler`).

#[path = "../../../tests/support/npy.rs"]
mod npy;

use std::path::PathBuf;

use difflab_models::{UNetInputs, load_diffusers_unet};
use difflab_samplers::{
    Conditioning, DdimSampler, FnDenoiser, GlobalSeedNoise, NoiseSource, Sampler, X0Processing,
};
use difflab_schedulers::{Prediction, ScheduleConfig, TimestepSpacing};
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/unet2d/uncond")
}

#[test]
fn ddim_20_steps_reproduces_diffusers_pipeline() {
    let (reference_shape, reference) =
        npy::read_npy_u8(&fixture().join("ddim_seed0_steps20_n4.npy"));
    let (unet, _vs, config) = load_diffusers_unet(fixture(), Device::Cpu).expect("load fixture");
    let (h, w) = config.sample_size().expect("sample_size");
    let c = config.in_channels;
    assert_eq!(reference_shape, [4, h, w, c]);

    let schedule = ScheduleConfig::default().build().expect("schedule");
    let sampler = DdimSampler::new(
        &schedule,
        20,
        TimestepSpacing::Leading,
        0,
        true,
        0.0,
        X0Processing::Clip { range: 1.0 },
    )
    .expect("sampler");
    let denoiser = FnDenoiser::new(
        Prediction::Eps,
        |x: &Tensor, t: &Tensor, _: &Conditioning| {
            unet.forward(x, t, &UNetInputs::classes(None), false)
        },
    );
    // torch.manual_seed(0); torch.randn([4, C, H, W]); eta = 0 draws nothing more.
    let mut noise = GlobalSeedNoise::new(0);
    let x = noise.draw(&[4, c, h, w], Kind::Float, Device::Cpu);
    let x = sampler
        .sample(&denoiser, x, &Conditioning::none(), &mut noise, &mut |_| {})
        .expect("sampling");
    drop(noise);

    let images = ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0)
        .round()
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_kind(Kind::Uint8);
    let ours = Vec::<u8>::try_from(images.flatten(0, -1)).expect("to vec");
    let mut differing = 0usize;
    let mut worst = 0i32;
    for (a, b) in ours.iter().zip(&reference) {
        let d = (i32::from(*a) - i32::from(*b)).abs();
        differing += usize::from(d > 0);
        worst = worst.max(d);
    }
    println!(
        "DDIM-20 vs diffusers: {differing} of {} values differ, max |diff| = {worst}",
        ours.len()
    );
    assert!(
        worst <= 1,
        "max pixel diff {worst} > 1 ({differing} values differ)"
    );
}
