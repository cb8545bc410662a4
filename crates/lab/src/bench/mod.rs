//! Throughput measurements behind `difflab bench`: the trainer's own step (forward, backward,
//! gradient clipping, AdamW, EMA) and the pipeline's DDIM sampler, timed after warm-up, plus
//! the figures needed to read them: analytic FLOPs per example, the machine's measured matmul
//! (sgemm) peak and the process's peak resident memory.
//!
//! Each measurement should run in its own process when its peak memory matters: the peak is
//! the process's high-water mark (`VmHWM`), which never goes down.

use std::time::Instant;

use difflab_models::flops::{mlp_forward_flops, training_flops, unet_forward_flops};
use difflab_samplers::{
    Conditioning, GlobalSeedNoise, NoiseSource, SampleError, SamplerKeys, SamplerKind,
    generator_lock, splitmix_63,
};
use difflab_schedulers::NoiseSchedule;
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use difflab_pipeline::{ExperimentConfig, ModelConfig, Network};
use difflab_sampling::NetworkDenoiser;
use difflab_train::{Autocast, Engine, Learner, StepEvent, TrainError, synthetic_batch};

/// What to measure and how much.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Examples per step (training) and per sampling run.
    pub batch: i64,
    /// Image height and width (ignored for vector data).
    pub resolution: i64,
    /// Timed training steps (0: no training measurement).
    pub train_steps: usize,
    /// DDIM steps per sampling run (0: no sampling measurement).
    pub sample_steps: usize,
    /// Timed sampling runs.
    pub sample_runs: usize,
    /// Untimed training steps (and one untimed sampling run) first.
    pub warmup: usize,
    /// Where tensors live.
    pub device: Device,
}

/// Training throughput.
#[derive(Clone, Debug, Serialize)]
pub struct TrainFigures {
    /// Examples per second over the timed steps.
    pub images_per_s: f64,
    /// Optimizer steps per second.
    pub steps_per_s: f64,
    /// Median step time in milliseconds.
    pub median_step_ms: f64,
    /// Timed steps.
    pub steps: usize,
    /// Where a step's time goes: the mean milliseconds per step of each phase.
    pub phases_ms: StepPhases,
}

/// Mean milliseconds per training step spent in each phase of the step (on CUDA the device is
/// synchronised between phases, so each figure includes its own kernels).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepPhases {
    /// Reseeding, timestep and noise draws, forward pass and loss, reading the loss back.
    pub forward: f64,
    /// `loss.backward()`.
    pub backward: f64,
    /// The gradient norm and clipping factor (including reading the norm back; the scaling
    /// itself is in `update` where the optimizer's pass applies it).
    pub clip: f64,
    /// The AdamW step, zeroing the gradients and the EMA update (one pass over each parameter
    /// where the fused kernel applies: `AdamW::step_clip_zero_ema`).
    pub update: f64,
}

/// Sampling throughput.
#[derive(Clone, Debug, Serialize)]
pub struct SampleFigures {
    /// Examples per second over the timed runs.
    pub images_per_s: f64,
    /// Median seconds per sampling run (`batch` examples, `steps` denoiser calls).
    pub median_run_s: f64,
    /// Denoiser calls per run.
    pub steps: usize,
    /// Timed runs.
    pub runs: usize,
}

/// Forward FLOPs of one example of `model` at `resolution` (see [`difflab_models::flops`]);
/// `None` for models the count does not cover (the SR-UNet).
pub fn forward_flops(model: &ModelConfig, resolution: i64) -> Option<u64> {
    match model {
        ModelConfig::Unet(c) => unet_forward_flops(c, resolution, resolution).ok(),
        ModelConfig::Mlp(c) => Some(mlp_forward_flops(c)),
        ModelConfig::SrUnet(_) => None,
    }
}

/// FLOPs of one training example (forward + backward ≈ 3× forward).
pub fn train_flops(model: &ModelConfig, resolution: i64) -> Option<u64> {
    forward_flops(model, resolution).map(training_flops)
}

/// This process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`; Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Measured single-precision matmul peak in GFLOP/s: the fastest of `reps` products of two
/// `n`×`n` f32 matrices (2n³ FLOPs each) after two untimed ones. The fastest, not the median:
/// on a shared machine other load only ever slows a product down, so the best time is the
/// closest to what the hardware can do (a median read 95–177 GFLOP/s on a contended 2-core
/// host whose quiet peak is ~250).
pub fn sgemm_gflops(n: i64, reps: usize, device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let out = Tensor::empty([n, n], (Kind::Float, device));
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps + 2 {
        sync(device);
        let start = Instant::now();
        let _ = a.mm_out(&out, &b);
        sync(device);
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / fastest / 1e9
}

/// Seconds spent in each of a step's phases, measured lap by lap.
struct PhaseClock {
    device: Device,
    last: Instant,
    laps: [f64; 4],
}

impl PhaseClock {
    fn new(device: Device, start: Instant) -> Self {
        Self {
            device,
            last: start,
            laps: [0.0; 4],
        }
    }

    /// Close phase `i`: the time since the previous lap (after the device catches up).
    fn lap(&mut self, i: usize) {
        sync(self.device);
        let now = Instant::now();
        self.laps[i] += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => 0.5 * (values[n / 2 - 1] + values[n / 2]),
    }
}

/// Time `settings.train_steps` steps of the trainer's own step on a fixed synthetic batch:
/// the micro-batch loss of [`difflab_train::train`] (timesteps, noise, objective, loss
/// weighting, dropout, bf16 autocast where configured), backward, gradient clipping, AdamW
/// and the EMA update — everything but data loading, logging and checkpoints.
pub fn bench_training(
    config: &ExperimentConfig,
    settings: &BenchSettings,
) -> Result<TrainFigures, TrainError> {
    let device = settings.device;
    let mut learner = Learner::new(config, device, Engine::Auto)?;
    let batch = synthetic_batch(config, settings.batch, settings.resolution);

    let mut times = Vec::with_capacity(settings.train_steps);
    let total = settings.warmup + settings.train_steps;
    let mut timed = 0.0;
    let mut phases = [0.0f64; 4];
    for step in 0..total as u64 {
        sync(device);
        let start = Instant::now();
        let mut clock = PhaseClock::new(device, start);
        learner.step(
            step,
            &mut || Ok(batch.shallow_clone()),
            &mut |event| match event {
                StepEvent::Loss => clock.lap(0),
                StepEvent::Backward => clock.lap(1),
                StepEvent::Clipped => clock.lap(2),
                StepEvent::Updated => clock.lap(3),
                StepEvent::Inputs(_) | StepEvent::Gradients(_) => {}
            },
        )?;
        if step as usize >= settings.warmup {
            let dt = start.elapsed().as_secs_f64();
            timed += dt;
            times.push(dt);
            for (sum, lap) in phases.iter_mut().zip(clock.laps) {
                *sum += lap;
            }
        }
    }
    let steps = settings.train_steps;
    let per_step = |i: usize| phases[i] * 1e3 / steps.max(1) as f64;
    Ok(TrainFigures {
        images_per_s: (steps as f64 * settings.batch as f64) / timed,
        steps_per_s: steps as f64 / timed,
        median_step_ms: median(&mut times) * 1e3,
        steps,
        phases_ms: StepPhases {
            forward: per_step(0),
            backward: per_step(1),
            clip: per_step(2),
            update: per_step(3),
        },
    })
}

/// Time `settings.sample_runs` runs of the config's sampler switched to DDIM with
/// `settings.sample_steps` steps (the settings DDIM takes kept: spacing, clipping, and η of a
/// DDIM config) on a batch of `settings.batch` examples, after one untimed run.
pub fn bench_sampling(
    config: &ExperimentConfig,
    settings: &BenchSettings,
) -> Result<SampleFigures, TrainError> {
    let device = settings.device;
    let schedule: NoiseSchedule = config.schedule.build()?;
    let sampler_config = config
        .sampler
        .apply(&SamplerKeys {
            kind: Some(SamplerKind::Ddim),
            steps: Some(settings.sample_steps),
            ..SamplerKeys::default()
        })
        .map_err(SampleError::from)?;
    let sampler = sampler_config.build(&schedule, None)?;
    let rng = generator_lock();
    tch::manual_seed(splitmix_63(config.seed, u64::MAX) as i64);
    let vs = nn::VarStore::new(device);
    let network = Network::build(&vs.root(), &config.model)?;
    drop(rng);
    let denoiser = NetworkDenoiser::new(&network, config.objective);
    let example = synthetic_batch(config, settings.batch, settings.resolution);
    let cond = Conditioning {
        class_labels: example.class_labels.map(|l| l.to_device(device)),
        label_vector: example.label_vector.map(|v| v.to_device(device)),
        image: example.cond_image.map(|c| c.to_device(device)),
        context: None,
        noise_level: None,
    };
    let shape =
        difflab_train::synthetic::example_shape(config, settings.batch, settings.resolution);
    let mut noise = GlobalSeedNoise::new(splitmix_63(config.seed, 0x5EED));
    let bf16 = config.training.precision.uses_bf16(device);
    let mut times = Vec::with_capacity(settings.sample_runs);
    for run in 0..settings.sample_runs + 1 {
        let x = noise.draw(&shape, Kind::Float, device);
        sync(device);
        let start = Instant::now();
        let _autocast = bf16.then(|| Autocast::bf16(device));
        let out = sampler.sample(&denoiser, x, &cond, &mut noise, &mut |_| {})?;
        drop(out);
        sync(device);
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let total: f64 = times.iter().sum();
    let runs = settings.sample_runs;
    Ok(SampleFigures {
        images_per_s: (runs as f64 * settings.batch as f64) / total,
        median_run_s: median(&mut times),
        steps: settings.sample_steps,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> ExperimentConfig {
        difflab_pipeline::config::parse_config(
            "name: tiny\nmodel:\n  kind: unet\n  block_out_channels: [4, 8]\n  layers_per_block: 1\n  norm_num_groups: 2\n  attention: [none, full]\n",
            std::path::Path::new("tiny.yaml"),
            &[],
        )
        .expect("config")
    }

    #[test]
    fn tiny_model_trains_and_samples_with_finite_figures() {
        let config = tiny_config();
        let settings = BenchSettings {
            batch: 2,
            resolution: 8,
            train_steps: 2,
            sample_steps: 2,
            sample_runs: 1,
            warmup: 1,
            device: Device::Cpu,
        };
        let train = bench_training(&config, &settings).expect("train");
        assert!(train.images_per_s.is_finite() && train.images_per_s > 0.0);
        assert_eq!(train.steps, 2);
        let p = &train.phases_ms;
        let phases = [p.forward, p.backward, p.clip, p.update];
        assert!(phases.iter().all(|ms| ms.is_finite() && *ms >= 0.0));
        // The phases tile the step: their sum is the mean step time (within timer overhead).
        let mean_step_ms = 1e3 / train.steps_per_s;
        let sum: f64 = phases.iter().sum();
        assert!(
            sum <= mean_step_ms * 1.0001 && sum > 0.5 * mean_step_ms,
            "{sum} vs {mean_step_ms}"
        );
        let sample = bench_sampling(&config, &settings).expect("sample");
        assert!(sample.images_per_s.is_finite() && sample.images_per_s > 0.0);
        assert!(forward_flops(&config.model, 8).expect("flops") > 0);
        assert!(peak_rss_bytes().expect("linux") > 1 << 20);
        assert!(sgemm_gflops(64, 2, Device::Cpu) > 0.0);
    }
}
