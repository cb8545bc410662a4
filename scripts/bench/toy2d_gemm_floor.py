#!/usr/bin/env python3
"""The floor under a training step of the 2-D toy MLP (3 x 256, batch 25, a timestep per
example): the time of its matrix products alone, on the BLAS both difflab and PyTorch use.

A step of `configs/toy2d.yaml` multiplies eight 256 x 256 weight matrices (time MLP 2, hidden
layers 3, time projections 3): 8 forward products `x W^T`, 8 weight gradients `g^T x` and 7
input gradients `g W` (the time MLP's first layer needs none), each about 3.3 MFLOP, plus a few
tiny ones for the 2-wide input and output layers (left out). This times exactly those 23
products into preallocated outputs (`torch.mm(..., out=)`), so neither allocation nor autograd
is included. Prints one JSON object.
"""

import argparse
import json
import os
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds of 500 steps")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    b, h = args.batch, args.hidden
    x, w, g = torch.randn(b, h), torch.randn(h, h), torch.randn(b, h)
    act_out, weight_out = torch.empty(b, h), torch.empty(h, h)

    def step():
        for _ in range(8):
            torch.mm(x, w.t(), out=act_out)
        for _ in range(7):
            torch.mm(g, w, out=act_out)
        for _ in range(8):
            torch.mm(g.t(), x, out=weight_out)

    for _ in range(300):
        step()
    rounds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(500):
            step()
        rounds.append((time.perf_counter() - start) / 500 * 1e3)
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "batch": b,
        "hidden": h,
        "products": 23,
        "mflop": 23 * 2 * b * h * h / 1e6,
        "median_ms": statistics.median(rounds),
        "min_ms": min(rounds),
    }))


if __name__ == "__main__":
    main()
