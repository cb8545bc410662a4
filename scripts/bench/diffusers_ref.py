#!/usr/bin/env python3
"""Reference side of `difflab bench`: the same UNet in diffusers (UNet2DModel built from the
config.json difflab exports), measured the same way with PyTorch eager.

Training step (as diffusers' train_unconditional.py does it): eps-prediction MSE on
DDPMScheduler.add_noise, backward, clip_grad_norm_(1.0), AdamW (lr 2e-4, betas 0.9/0.999,
eps 1e-8, no weight decay), EMAModel.step (decay 0.9999 with warm-up), loss.item().
Sampling: DDIMScheduler(1000 train steps, defaults) with N steps, under torch.no_grad(),
the loop of DDIMPipeline. Peak memory: VmHWM of this process. Prints one JSON object with
the same keys as `difflab bench --json`.
"""

import argparse
import json
import os
import statistics
import time


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def sgemm_gflops(torch, n, reps=8):
    """The fastest of `reps` products (as `difflab bench`): other load only slows one down."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    times = []
    for i in range(reps + 2):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2.0 * n**3 / min(times) / 1e9




def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="diffusers UNet2DModel folder (config.json)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--sample-runs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sgemm-size", type=int, default=2048)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        # OpenMP reads this at start-up: set it before torch loads.
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = UNet2DModel.load_config(args.model)
    resolution = args.resolution or config.get("sample_size") or 32
    if isinstance(resolution, (list, tuple)):
        resolution = resolution[0]
    shape = (args.batch, config["in_channels"], resolution, resolution)
    report = {
        "impl": "diffusers",
        "model": os.path.basename(os.path.normpath(args.model)),
        "device": "Cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "resolution": resolution,
        "torch": torch.__version__,
    }
    model = UNet2DModel.from_config(config)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["sgemm_gflops"] = sgemm_gflops(torch, args.sgemm_size) if args.sgemm_size > 0 else None

    if args.train_steps > 0:
        model.train()
        noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                       power=2 / 3)
        clean = torch.rand(shape) * 2 - 1
        times = []
        for step in range(args.warmup + args.train_steps):
            start = time.perf_counter()
            noise = torch.randn_like(clean)
            t = torch.randint(0, 1000, (args.batch,), dtype=torch.long)
            noisy = noise_scheduler.add_noise(clean, noise, t)
            pred = model(noisy, t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            ema.step(model.parameters())
            loss.item()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        total = sum(times)
        report["train"] = {
            "images_per_s": args.train_steps * args.batch / total,
            "steps_per_s": args.train_steps / total,
            "median_step_ms": statistics.median(times) * 1e3,
            "steps": args.train_steps,
        }

    if args.sample_steps > 0:
        model.eval()
        scheduler = DDIMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(args.sample_steps)
        times = []
        for run in range(args.sample_runs + 1):
            x = torch.randn(shape)
            start = time.perf_counter()
            with torch.no_grad():
                for t in scheduler.timesteps:
                    out = model(x, t).sample
                    x = scheduler.step(out, t, x, eta=0.0).prev_sample
            if run > 0:
                times.append(time.perf_counter() - start)
        report["sample"] = {
            "images_per_s": args.sample_runs * args.batch / sum(times),
            "median_run_s": statistics.median(times),
            "steps": args.sample_steps,
            "runs": args.sample_runs,
        }
    report["peak_rss_mb"] = peak_rss_mb()
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
