//! A tiny taped-MLP training step (the 2-D toy, 16 wide, two layers, a batch of 6) for the
//! tests of the training loop's parts.

use difflab_samplers::generator_lock;
use difflab_schedulers::NoiseSchedule;
use tch::{Device, Tensor, nn};

use super::engine::{Loss, StepEngine};
use super::objective::Objective;
use super::{FusedCpuEngine, StepInputs};
use difflab_data::Batch;
use difflab_pipeline::{ExperimentConfig, Network};

/// The toy's config, objective, variables, network and batch.
pub(crate) struct ToyStep {
    pub config: ExperimentConfig,
    pub objective: Objective,
    pub vs: nn::VarStore,
    pub network: Network,
    pub batch: Batch,
}

impl ToyStep {
    pub(crate) fn new() -> Self {
        let config = difflab_pipeline::config::parse_config(
            "name: toy\ndata:\n  kind: toy2d\nmodel:\n  kind: mlp\n  hidden: 16\n  layers: 2\n",
            std::path::Path::new("toy.yaml"),
            &[],
        )
        .expect("config");
        let schedule: NoiseSchedule = config.schedule.build().expect("schedule");
        let objective = Objective::new(&config, &schedule, Device::Cpu).expect("objective");
        let vs = nn::VarStore::new(Device::Cpu);
        let network = Network::build(&vs.root(), &config.model).expect("network");
        let batch = crate::synthetic_batch(&config, 6, 8);
        Self {
            config,
            objective,
            vs,
            network,
            batch,
        }
    }

    /// The fused engine's loss of the batch (the MLP's taped pass), with libtorch's generator
    /// seeded with `seed`.
    pub(crate) fn loss(&self, seed: i64) -> Loss {
        let inputs = {
            let _rng = generator_lock();
            tch::manual_seed(seed);
            StepInputs::draw(
                &self.batch,
                &self.objective.process,
                &self.config,
                Device::Cpu,
            )
        };
        let ema = nn::VarStore::new(Device::Cpu);
        let _ema_network = Network::build(&ema.root(), &self.config.model).expect("network");
        let mut engine =
            FusedCpuEngine::new(&self.vs, &ema, &self.config.training, true).expect("engine");
        engine.loss(&self.network, &self.objective, &inputs)
    }

    /// A copy of every variable's gradient, in name order.
    pub(crate) fn grads(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, v)| (name, v.grad().copy()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
