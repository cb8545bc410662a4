"""The first loss of diffusers' UNet2DModel as the Fashion-MNIST recipe builds it
(../../../configs/quality/fmnist-recipe.yaml: 32-64-64, one resnet per level, attention at the
lowest level, 8 groups, 28x28), for the weights torch.manual_seed(s) draws, s = 0..3, on one
fixed batch: the first 16 training images in [-1, 1], t and noise from a generator seeded 1234,
x_t = DDPMScheduler(linear 1e-4..0.02).add_noise, loss = F.mse_loss(pred, noise).
Writes initial_loss.safetensors (x0, t, noise, loss[4]); crates/pipeline/tests/training_parity.rs
checks that difflab's freshly built model starts at the same loss for each seed.
usage: python make_initial_loss.py   (torch==2.13.0, diffusers==0.42.1, dataset-fashion-mnist)"""
import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

torch.set_num_threads(1)
raw = gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").read()
x = np.frombuffer(raw, np.uint8, offset=16)[: 16 * 784].reshape(16, 1, 28, 28)
x0 = torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
g = torch.Generator().manual_seed(1234)
t = torch.randint(0, 1000, (16,), generator=g)
noise = torch.randn(x0.shape, generator=g)
sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
x_t = sched.add_noise(x0, noise, t)
losses = []
for seed in range(4):
    torch.manual_seed(seed)
    m = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    with torch.no_grad():
        losses.append(F.mse_loss(m(x_t, t).sample, noise).item())
print("initial losses", losses)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "initial_loss.safetensors")
save_file({"x0": x0, "t": t, "noise": noise, "loss": torch.tensor(losses, dtype=torch.float64)}, out)
