//! A tiny taped-MLP training step (the 2-D toy, 16 wide, two layers, a batch of 6) for the
//! tests of the training loop's parts.

use difflab_samplers::generator_lock;
use difflab_schedulers::NoiseSchedule;
use tch::{Device, Tensor, nn};

use super::trainer::{MicroBatchLoss, Process};
use super::{LossKind, build_process, micro_batch_loss};
use crate::data::Batch;
use crate::{ExperimentConfig, Network};

/// The toy's config, noising process, variables, network and batch.
pub(crate) struct ToyStep {
    pub config: ExperimentConfig,
    pub process: Process,
    pub loss_kind: LossKind,
    pub vs: nn::VarStore,
    pub network: Network,
    pub batch: Batch,
}

impl ToyStep {
    pub(crate) fn new() -> Self {
        let config = crate::config::parse_config(
            "name: toy\ndata:\n  kind: toy2d\nmodel:\n  kind: mlp\n  hidden: 16\n  layers: 2\n",
            std::path::Path::new("toy.yaml"),
            &[],
        )
        .expect("config");
        let schedule: NoiseSchedule = config.schedule.build().expect("schedule");
        let (process, loss_kind) = build_process(&config, &schedule, Device::Cpu).expect("process");
        let vs = nn::VarStore::new(Device::Cpu);
        let network = Network::build(&vs.root(), &config.model).expect("network");
        let batch = crate::bench::synthetic_batch(&config, 6, 8);
        Self {
            config,
            process,
            loss_kind,
            vs,
            network,
            batch,
        }
    }

    /// The trainer's loss of the batch, with libtorch's generator seeded with `seed`.
    pub(crate) fn loss(&self, seed: i64) -> MicroBatchLoss {
        let _rng = generator_lock();
        tch::manual_seed(seed);
        micro_batch_loss(
            &self.batch,
            &self.network,
            &self.process,
            &self.config,
            self.loss_kind,
            None,
            Device::Cpu,
        )
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
