#!/usr/bin/env python3
"""The seed's 2-D toy recipe in PyTorch eager, as the reference for
`difflab bench --config configs/toy2d.yaml`: an MLP denoiser (sinusoidal time code -> 2-layer
time MLP; input linear, `layers` x SiLU(linear(h) + time_proj(e)), output linear: the same
network as difflab's MlpDenoiser, 3 x 256), T = 1000 linear betas, eps-prediction MSE, Adam,
batch 25, and DDPM ancestral sampling of 1200 points over all 1000 steps, the loop written as
the recipe writes it. The recipe has no EMA and no gradient clipping; `--ema-decay D --grad-clip N`
add them (torch.nn.utils.clip_grad_norm_ before the step; diffusers' EMAModel with warm-up
after it, as scripts/bench/diffusers_ref.py and train_unconditional.py do), so the step does the
same work as difflab's trainer with configs/toy2d.yaml (clipping 1.0, EMA 0.995 with warm-up).
Prints one JSON object with the keys of `difflab bench --json`.
"""

import argparse
import json
import math
import os
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=25, help="training batch")
    p.add_argument("--points", type=int, default=1200, help="points sampled per run")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--sample-runs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ema-decay", type=float, default=None,
                   help="add an EMA of the weights (diffusers' EMAModel, warm-up on)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the gradients' global norm to this before the step")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        # OpenMP reads this at start-up: set it before torch loads, as the Rust side does.
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden, T = args.hidden, args.timesteps

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.time_1 = nn.Linear(hidden, hidden)
            self.time_2 = nn.Linear(hidden, hidden)
            self.input = nn.Linear(2, hidden)
            self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(args.layers))
            self.time_projs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(args.layers))
            self.output = nn.Linear(hidden, 2)

        def forward(self, x, t):
            half = hidden // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
            args_ = t.float()[:, None] * freqs[None]
            code = torch.cat([args_.cos(), args_.sin()], -1)
            e = nn.functional.silu(self.time_2(nn.functional.silu(self.time_1(code))))
            h = self.input(x)
            for lin, proj in zip(self.linears, self.time_projs):
                h = nn.functional.silu(lin(h) + proj(e))
            return self.output(h)

    model = Mlp()
    betas = torch.linspace(1e-4, 0.02, T)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = None
    if args.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        # foreach=True: the faster of diffusers' two update loops for these 16 small tensors.
        ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True,
                       inv_gamma=1.0, power=2 / 3, foreach=True)
    data = torch.randn(10000, 2)
    times = []
    for step in range(args.warmup + args.train_steps):
        start = time.perf_counter()
        idx = torch.randint(0, data.shape[0], (args.batch,))
        x0 = data[idx]
        t = torch.randint(0, T, (args.batch,))
        noise = torch.randn_like(x0)
        ab = alpha_bar[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = ((model(xt, t) - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        if args.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.step(model.parameters())
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    total = sum(times) or float("nan")
    report = {
        "impl": "pytorch",
        "model": "toy2d",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "ema_decay": args.ema_decay,
        "grad_clip": args.grad_clip,
        "train": None if not times else {
            "images_per_s": args.train_steps * args.batch / total,
            "steps_per_s": args.train_steps / total,
            "median_step_ms": statistics.median(times) * 1e3,
            "steps": args.train_steps,
        },
    }

    runs = []
    for run in range(args.sample_runs + 1):
        start = time.perf_counter()
        with torch.no_grad():
            x = torch.randn(args.points, 2)
            for i in reversed(range(T)):
                t = torch.full((args.points,), i, dtype=torch.long)
                eps = model(x, t)
                mean = (x - betas[i] / (1 - alpha_bar[i]).sqrt() * eps) / alphas[i].sqrt()
                if i > 0:
                    x = mean + betas[i].sqrt() * torch.randn_like(x)
                else:
                    x = mean
        if run > 0:
            runs.append(time.perf_counter() - start)
    report["sample"] = None if not runs else {
        "images_per_s": args.sample_runs * args.points / sum(runs),
        "median_run_s": statistics.median(runs),
        "steps": T,
        "runs": args.sample_runs,
    }
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                report["peak_rss_mb"] = int(line.split()[1]) / 1024.0
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
