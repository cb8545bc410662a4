//! `--save-trajectory`: x_t and the predicted x₀ over the steps, for the first images of a
//! job — the strip every diffusion tutorial shows, and the first thing to look at when samples
//! come out wrong (is x̂₀ sensible early? does x_t blow up?).

use std::path::Path;

use difflab_samplers::StepInfo;
use tch::{Device, Tensor};

use super::SamplingError;
use difflab_data::images::save_grid;

/// Recorded frames: for each kept step, x_t after the step and the x̂₀ it used.
pub struct Trajectory {
    /// Images recorded (the first of the job).
    pub images: i64,
    /// The timestep of each frame.
    pub timesteps: Vec<i64>,
    x: Vec<Tensor>,
    x0: Vec<Tensor>,
    keep: Vec<usize>,
}

impl Trajectory {
    /// Record `images` images at `frames` steps spread evenly over `total` steps (the last step
    /// always included).
    pub fn new(images: i64, frames: usize, total: usize) -> Self {
        let frames = frames.clamp(1, total.max(1));
        let keep = (1..=frames)
            .map(|k| (k * total).div_ceil(frames).saturating_sub(1))
            .collect();
        Self {
            images,
            timesteps: Vec::new(),
            x: Vec::new(),
            x0: Vec::new(),
            keep,
        }
    }

    /// Record `step` if it is a kept one.
    pub fn observe(&mut self, step: &StepInfo<'_>) {
        if self.keep.contains(&step.index) {
            let n = self.images.min(step.x.size()[0]);
            self.timesteps.push(step.t);
            self.x.push(step.x.narrow(0, 0, n).to_device(Device::Cpu));
            self.x0
                .push(step.pred_x0.narrow(0, 0, n).to_device(Device::Cpu));
        }
    }

    /// Write the strip: for each image a row of x_t and below it a row of x̂₀, one column per
    /// frame (left = noisiest). Images only (`[C, H, W]` samples).
    pub fn save(&self, path: &Path) -> Result<(), SamplingError> {
        let Some(first) = self.x.first() else {
            return Err(SamplingError::invalid("no trajectory frames were recorded"));
        };
        if first.dim() != 4 {
            return Err(SamplingError::invalid(
                "--save-trajectory needs image samples (this model samples vectors)",
            ));
        }
        let n = first.size()[0];
        let mut tiles = Vec::new();
        for i in 0..n {
            tiles.extend(self.x.iter().map(|f| f.get(i)));
            tiles.extend(self.x0.iter().map(|f| f.get(i).clamp(-1.0, 1.0)));
        }
        save_grid(&Tensor::stack(&tiles, 0), self.x.len(), path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_spread_evenly_and_end_at_the_last_step() {
        assert_eq!(Trajectory::new(1, 4, 8).keep, [1, 3, 5, 7]);
        assert_eq!(Trajectory::new(1, 10, 3).keep, [0, 1, 2]);
        assert_eq!(Trajectory::new(1, 1, 50).keep, [49]);
    }
}
