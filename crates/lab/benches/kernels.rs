//! Micro-benchmarks of the pieces difflab owns, with the ratios issue 7 asks about:
//!
//! - attention (`SpatialAttention`) and GroupNorm+SiLU at the sizes of the 32 px bench model
//!   and of the 128 px anime model;
//! - SiLU at inference: difflab's kernel against libtorch's;
//! - batch-1 convolutions at inference: difflab's im2col + BLAS path against libtorch's
//!   `conv2d`, at the shapes of the 32 px bench model;
//! - the sampler loop's own overhead per step (DDIM with a trivial denoiser), as a fraction of
//!   one UNet step at 32×32 (target: under 1 %);
//! - data loading at 128 px (JPEG folder, decode + resize + crop + flip, the trainer's loader),
//!   against the rate at which training at 128 px consumes images (target: at least 5×).
//!
//! `cargo bench -p difflab-lab --bench kernels [-- --quick]`; set `OMP_NUM_THREADS` (and
//! the thread count below follows libtorch's) to compare machines. Each figure is the median of
//! repeated timings after warm-up; the harness is this file (std `Instant`), not criterion, so
//! nothing beyond the workspace's own crates is needed.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use difflab_data::{BadFilePolicy, DataLoader, open_dataset};
use difflab_kernels::conv::ConvPath;
use difflab_kernels::cpu::{silu_in_slice, silu_owned};
use difflab_kernels::group_norm_silu::{self, Modulation};
use difflab_lab::bench::{BenchSettings, bench_training};
use difflab_models::{AttentionConfig, AttentionKind, Conv2d, SpatialAttention};
use difflab_pipeline::config::parse_config;
use difflab_pipeline::{ExperimentConfig, Network};
use difflab_samplers::{
    Conditioning, Denoiser, FnDenoiser, GlobalSeedNoise, SamplerKeys, SamplerKind,
};
use difflab_sampling::NetworkDenoiser;
use difflab_schedulers::Prediction;
use tch::{Device, Kind, Tensor, nn};

/// Median seconds of `reps` calls of `f`, after `warmup` untimed ones.
fn median_secs(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Medians of `reps` timings each of `a` and `b`, taken in turn (a b, b a, a b, …) after
/// `warmup` calls of each, so that a drift of the machine's speed hits both alike.
fn interleaved_medians(
    warmup: usize,
    reps: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64) {
    let m = interleaved_medians_of(warmup, reps, &mut [&mut a, &mut b]);
    (m[0], m[1])
}

/// [`interleaved_medians`] for any number of functions: each round calls them all, starting
/// from a different one each time.
fn interleaved_medians_of(warmup: usize, reps: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for _ in 0..warmup {
        fs.iter_mut().for_each(|f| f());
    }
    let n = fs.len();
    let mut times = vec![Vec::with_capacity(reps); n];
    for i in 0..reps {
        for j in 0..n {
            let k = (i + j) % n;
            let start = Instant::now();
            fs[k]();
            times[k].push(start.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

fn config(yaml: &str) -> ExperimentConfig {
    parse_config(yaml, Path::new("bench.yaml"), &[]).expect("bench config")
}

/// The 32 px bench model (`scripts/bench/cases/small32`) as a difflab config.
const SMALL32: &str = "name: small32\ndata:\n  resolution: 32\nmodel:\n  kind: unet\n  block_out_channels: [32, 64, 64]\n  layers_per_block: 2\n  attention: [none, none, full]\n  norm_num_groups: 8\n";

fn attention_and_group_norm(quick: bool) {
    println!("## attention and GroupNorm+SiLU (forward, no grad)\n");
    println!(
        "| attention, shape [B, C, H, W] | head width | libtorch ops µs | `forward` µs | speed-up |"
    );
    println!("|---|---:|---:|---:|---:|");
    let _guard = tch::no_grad_guard();
    let reps = if quick { 5 } else { 30 };
    for &(b, c, hw, head_dim) in &[
        (16, 64, 8, 64),
        (1, 64, 8, 64),
        (1, 64, 8, 8),
        (1, 256, 16, 32),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let attention = SpatialAttention::new(
            &vs.root(),
            &AttentionConfig {
                channels: c,
                head_dim,
                norm_groups: Some(8),
                eps: 1e-5,
                rescale_output_factor: 1.0,
                kind: AttentionKind::Full,
            },
        )
        .expect("attention");
        let x = Tensor::randn([b, c, hw, hw], (Kind::Float, Device::Cpu));
        let (libtorch, ours) = interleaved_medians(
            3,
            reps * 4,
            || drop(attention.forward_libtorch(&x)),
            || drop(attention.forward(&x)),
        );
        println!(
            "| [{b}, {c}, {hw}, {hw}] | {head_dim} | {:.1} | {:.1} | {:.2}x |",
            libtorch * 1e6,
            ours * 1e6,
            libtorch / ours
        );
    }
    println!();
    println!(
        "| GroupNorm(8)+SiLU, shape [B, C, H, W] | libtorch ops + difflab SiLU µs | difflab fused µs | speed-up |"
    );
    println!("|---|---:|---:|---:|");
    for &(b, c, hw) in &[
        (16, 64, 32),
        (1, 32, 32),
        (1, 64, 16),
        (1, 64, 8),
        (1, 64, 32),
        (1, 128, 128),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = nn::group_norm(vs.root(), 8, c, Default::default());
        let x = Tensor::randn([b, c, hw, hw], (Kind::Float, Device::Cpu));
        let plain = Modulation::default();
        let composed = || silu_owned(nn::Module::forward(&norm, &x));
        let (composed_s, fused_s) = interleaved_medians(
            5,
            reps * 4,
            || drop(composed()),
            || {
                let fused = group_norm_silu::group_norm_silu(&x, &norm, 1e-5, plain);
                drop(fused.unwrap_or_else(composed))
            },
        );
        println!(
            "| [{b}, {c}, {hw}, {hw}] | {:.1} | {:.1} | {:.2}x |",
            composed_s * 1e6,
            fused_s * 1e6,
            composed_s / fused_s
        );
    }
    println!();
}

/// SiLU at inference: difflab's kernel (`difflab_kernels::cpu`, on a plain slice) against
/// libtorch's `silu` (SLEEF `expf`); both split over libtorch's OpenMP threads from 2 × 32768
/// elements on (difflab's through `difflab_kernels::omp_team`), for inputs in the usual range (standard deviation 4) and far out of it (1000, the
/// activations of an untrained MLP's diverging samples).
fn silu_kernel(quick: bool) {
    println!("## SiLU at inference (no grad)\n");
    println!("| shape | input std | libtorch `silu` µs | difflab kernel µs | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    let _guard = tch::no_grad_guard();
    let reps = if quick { 5 } else { 50 };
    for (shape, scale) in [
        (vec![25, 256], 4.0),
        (vec![1, 32, 32, 32], 4.0),
        (vec![1200, 256], 4.0),
        (vec![1200, 256], 1000.0),
    ] {
        let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * scale;
        let libtorch = median_secs(3, reps, || drop(x.silu()));
        let values = Vec::<f32>::try_from(x.flatten(0, -1)).expect("f32");
        let mut scratch = values.clone();
        let with_copy = median_secs(3, reps, || {
            scratch.copy_from_slice(&values);
            silu_in_slice(&mut scratch);
        });
        let copy = median_secs(3, reps, || scratch.copy_from_slice(&values));
        let ours = (with_copy - copy).max(1e-9);
        println!(
            "| {shape:?} | {scale} | {:.1} | {:.1} | {:.2}x |",
            libtorch * 1e6,
            ours * 1e6,
            libtorch / ours
        );
    }
    println!();
}

/// Batch-1 convolutions at inference: difflab's im2col + one BLAS product and its Winograd
/// `F(2×2, 3×3)` (3×3 stride-1 kernels) against libtorch's `conv2d`, at the shapes a 32 px
/// UNet with 32-64-64 channels runs when sampling one image, a few of the 128 px model's and
/// some larger 1×1 ones, and which path `Conv2d::forward` picks (`Conv2d::path_for`).
fn batch1_convolutions(quick: bool) {
    println!("## batch-1 convolutions at inference\n");
    println!(
        "| input [1, C, H, W] | out | kernel / stride | libtorch µs | im2col+BLAS µs | Winograd µs | best speed-up | `forward` takes |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---|");
    let _guard = tch::no_grad_guard();
    let reps = if quick { 20 } else { 300 };
    for (c, hw, out, k, stride) in [
        (3, 32, 32, 3, 1),
        (32, 32, 32, 3, 1),
        (64, 32, 64, 3, 1),
        (96, 32, 32, 3, 1),
        (64, 32, 32, 3, 1),
        (32, 32, 32, 3, 2),
        (32, 16, 64, 3, 1),
        (64, 16, 64, 3, 1),
        (128, 16, 64, 3, 1),
        (64, 16, 64, 3, 2),
        (64, 8, 64, 3, 1),
        (128, 8, 64, 3, 1),
        (64, 4, 64, 3, 1),
        (64, 64, 64, 3, 1),
        (128, 32, 128, 3, 1),
        (32, 16, 64, 1, 1),
        (128, 8, 64, 1, 1),
        (128, 16, 64, 1, 1),
        (96, 16, 64, 1, 1),
        (64, 32, 32, 1, 1),
        (96, 32, 32, 1, 1),
        (512, 16, 256, 1, 1),
        (256, 64, 128, 1, 1),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = Conv2d::new(vs.root(), c, out, k, stride, k / 2);
        let x = Tensor::randn([1, c, hw, hw], (Kind::Float, Device::Cpu));
        let kernel = conv.kernel();
        let path = match kernel.path_for(&x) {
            ConvPath::Libtorch => "libtorch",
            ConvPath::Im2colGemm => "im2col+BLAS",
            ConvPath::Winograd => "Winograd",
        };
        let winograd = kernel
            .forward_on_path(&x, ConvPath::Winograd, None)
            .is_some();
        let mut fs: Vec<Box<dyn FnMut()>> = vec![
            Box::new(|| drop(kernel.libtorch(&x))),
            Box::new(|| drop(kernel.forward_on_path(&x, ConvPath::Im2colGemm, None))),
        ];
        if winograd {
            fs.push(Box::new(|| {
                drop(kernel.forward_on_path(&x, ConvPath::Winograd, None))
            }));
        }
        let mut refs: Vec<&mut dyn FnMut()> = fs
            .iter_mut()
            .map(|f| &mut **f as &mut dyn FnMut())
            .collect();
        let t = interleaved_medians_of(10, reps, &mut refs);
        let best = t[1..].iter().copied().fold(f64::INFINITY, f64::min);
        let winograd_us = t
            .get(2)
            .map_or("–".to_string(), |w| format!("{:.1}", w * 1e6));
        println!(
            "| [1, {c}, {hw}, {hw}] | {out} | {k}×{k} / {stride} | {:.1} | {:.1} | {winograd_us} | {:.2}x | {path} |",
            t[0] * 1e6,
            t[1] * 1e6,
            t[0] / best
        );
    }
    println!();
}

fn sampler_overhead(quick: bool) {
    println!("## sampler overhead per step (DDIM, 32×32×3)\n");
    println!("| batch | trivial denoiser µs/step | UNet step µs | overhead / UNet step |");
    println!("|---:|---:|---:|---:|");
    let experiment = config(SMALL32);
    let schedule = experiment.schedule.build().expect("schedule");
    let steps = if quick { 20 } else { 100 };
    let sampler_config = experiment
        .sampler
        .apply(&SamplerKeys {
            kind: Some(SamplerKind::Ddim),
            steps: Some(steps),
            ..SamplerKeys::default()
        })
        .expect("ddim takes steps");
    let sampler = sampler_config.build(&schedule, None).expect("sampler");
    let vs = nn::VarStore::new(Device::Cpu);
    let network = Network::build(&vs.root(), &experiment.model).expect("network");
    let unet = NetworkDenoiser::new(&network, Prediction::Eps);
    let trivial = FnDenoiser::new(Prediction::Eps, |x: &Tensor, _: &Tensor, _: &_| {
        x.zeros_like()
    });
    let cond = Conditioning::default();
    for batch in [1i64, 16] {
        let mut noise = GlobalSeedNoise::new(0);
        let x = Tensor::randn([batch, 3, 32, 32], (Kind::Float, Device::Cpu));
        let loop_secs = median_secs(1, if quick { 3 } else { 7 }, || {
            let out = sampler
                .sample(&trivial, x.copy(), &cond, &mut noise, &mut |_| {})
                .expect("sample");
            drop(out);
        }) / steps as f64;
        let t = difflab_samplers::shared_timestep(500, batch, Device::Cpu);
        let _guard = tch::no_grad_guard();
        let unet_secs = median_secs(2, if quick { 3 } else { 10 }, || {
            drop(unet.forward(&x, &t, &cond))
        });
        println!(
            "| {batch} | {:.1} | {:.0} | {:.2} % |",
            loop_secs * 1e6,
            unet_secs * 1e6,
            100.0 * loop_secs / unet_secs
        );
    }
    println!();
}

fn data_loading(quick: bool) {
    println!("## data loading at 128 px\n");
    let dir = std::env::temp_dir().join(format!("difflab-bench-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files: usize = if quick { 64 } else { 256 };
    // 256×256 JPEGs (the loader resizes the shorter side to 128 and centre-crops), smooth
    // colour fields with texture so they compress like photographs rather than flat colour.
    for i in 0..files {
        let img = image::RgbImage::from_fn(256, 256, |x, y| {
            let n = (x * 7 + y * 13 + i as u32 * 31) % 64;
            image::Rgb([
                (x as u8).wrapping_add(n as u8),
                (y as u8) ^ (i as u8),
                (n * 4) as u8,
            ])
        });
        img.save(dir.join(format!("{i:04}.jpg")))
            .expect("write jpeg");
    }
    let experiment = config(&format!(
        "name: load\ndata:\n  kind: folder\n  path: {}\n  resolution: 128\n  hflip: true\nmodel:\n  kind: unet\n",
        dir.display()
    ));
    let threads = tch::get_num_threads().max(1) as usize;
    let batch = 16;
    println!("| decode workers | images/s |");
    println!("|---:|---:|");
    let mut best: f64 = 0.0;
    for workers in [1, threads] {
        let dataset = open_dataset(&experiment.data, 0).expect("dataset");
        let mut loader =
            DataLoader::new(Arc::clone(&dataset), batch, 0, workers, BadFilePolicy::Fail);
        let batches = 2 * files / batch;
        loader.next_batch().expect("warm-up batch");
        let start = Instant::now();
        for _ in 0..batches {
            let b = loader.next_batch().expect("batch");
            assert_eq!(b.x.size(), [batch as i64, 3, 128, 128]);
        }
        let rate = (batches * batch) as f64 / start.elapsed().as_secs_f64();
        best = best.max(rate);
        println!("| {workers} | {rate:.0} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
    // What training at 128 px consumes: the anime base model's trainer step on this machine.
    let anime = difflab_pipeline::load_config(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/anime.yaml"),
        &[],
    )
    .expect("configs/anime.yaml");
    let settings = BenchSettings {
        batch: 4,
        resolution: 128,
        train_steps: if quick { 1 } else { 3 },
        sample_steps: 0,
        sample_runs: 0,
        warmup: 1,
        device: Device::Cpu,
    };
    let train = bench_training(&anime, &settings).expect("anime training step");
    println!(
        "\ntraining `configs/anime.yaml` at 128 px (batch 4) consumes {:.2} images/s; the loader \
         delivers {:.0}x that.\n",
        train.images_per_s,
        best / train.images_per_s
    );
}

fn main() {
    // As the CLI does first thing: freed tensors' pages are reused instead of faulted in again.
    difflab_pipeline::allocator::tune_for_tensors();
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; any other argument is a filter on the section names.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    println!(
        "# difflab kernel benchmarks ({} threads{})\n",
        tch::get_num_threads(),
        if quick { ", quick" } else { "" }
    );
    if wanted("attention") {
        attention_and_group_norm(quick);
    }
    if wanted("silu") {
        silu_kernel(quick);
    }
    if wanted("conv") {
        batch1_convolutions(quick);
    }
    if wanted("sampler") {
        sampler_overhead(quick);
    }
    if wanted("data") {
        data_loading(quick);
    }
}
