#!/usr/bin/env python3
"""Summarise the JSON lines written by compare.sh as a markdown table: medians over rounds,
the difflab/reference ratio (median of the per-round ratios: rounds are interleaved, so each
ratio compares runs taken moments apart), the fraction of the measured sgemm peak, and peak
resident memory."""

import argparse
import collections
import json
import statistics


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("jsonl")
    p.add_argument("--threads", default="?")
    args = p.parse_args()
    rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
    runs = collections.defaultdict(list)
    flops = {}
    sgemm = []
    for row in rows:
        res = row["result"]
        runs[(row["case"], row["figure"], row["side"])].append(res)
        if res.get("forward_gflops_per_image"):
            flops[row["case"]] = res["forward_gflops_per_image"]
        if res.get("sgemm_gflops"):
            sgemm.append(res["sgemm_gflops"])
    # The best reading of all runs: contention only ever lowers it.
    peak = max(sgemm) if sgemm else None

    def part_of(fig, res):
        # `train-recipe` (the toy against the seed recipe) reads the run's `train` part.
        return res.get(fig.split("-")[0]) or {}

    def figure(case, fig, res):
        part = part_of(fig, res)
        if case == "toy2d" and fig.startswith("train"):
            return part.get("steps_per_s"), "steps/s"
        if case == "toy2d" and fig == "sample":
            return part.get("median_run_s"), "s per 1200 points x 1000 steps (lower is better)"
        return part.get("images_per_s"), "img/s"

    def gflops(case, fig, res, value):
        f = flops.get(case)
        if f is None or value is None or case == "toy2d":
            return None
        part = part_of(fig, res)
        if fig == "train":
            return 3 * f * value
        return f * value * part.get("steps", 0)

    print(f"Threads: {args.threads}. sgemm peak (best of runs): "
          + (f"{peak:.0f} GFLOP/s" if peak else "not measured") + ".\n")
    print("| case | figure | unit | difflab | reference | ratio difflab/ref | difflab % peak "
          "| ref % peak | peak RSS difflab (MiB) | peak RSS ref (MiB) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    order = []
    for row in rows:
        key = (row["case"], row["figure"])
        if key not in order:
            order.append(key)
    for case, fig in order:
        a = runs.get((case, fig, "difflab"), [])
        b = runs.get((case, fig, "reference"), [])
        va = [figure(case, fig, r)[0] for r in a]
        vb = [figure(case, fig, r)[0] for r in b]
        unit = figure(case, fig, (a or b)[0])[1]
        ma = statistics.median(va) if va else None
        mb = statistics.median(vb) if vb else None
        pairs = [x / y for x, y in zip(va, vb) if x and y]
        ratio = statistics.median(pairs) if pairs else None
        lower_better = "lower" in unit
        if ratio is not None and lower_better:
            ratio = 1 / ratio  # speed-up, higher is better everywhere
        pa = [gflops(case, fig, r, v) for r, v in zip(a, va)]
        pb = [gflops(case, fig, r, v) for r, v in zip(b, vb)]

        def pct(xs):
            xs = [x for x in xs if x]
            return f"{100 * statistics.median(xs) / peak:.1f}%" if xs and peak else "-"

        def rss(rs):
            xs = [r.get("peak_rss_mb") for r in rs if r.get("peak_rss_mb")]
            return f"{statistics.median(xs):.0f}" if xs else "-"

        fmt = lambda v: "-" if v is None else f"{v:.3g}"
        print(f"| {case} | {fig} | {unit} | {fmt(ma)} | {fmt(mb)} | "
              + ("-" if ratio is None else f"{ratio:.2f}x") + f" | {pct(pa)} | {pct(pb)} | "
              f"{rss(a)} | {rss(b)} |")
    print("\nratio: difflab speed / reference speed (median of per-round ratios); "
          "for the toy sampling time it is reference time / difflab time.")


if __name__ == "__main__":
    main()
