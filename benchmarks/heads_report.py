"""Demo figures for prompt sets and head detectors: top heads per detector, the IOI logit difference over a
set and the heads whose mean ablation halves it, and the massive activations over the set.

    python benchmarks/heads_report.py --rows 20

The mean-ablation sweep is exact head patching over the set: about n_heads x n_layers / 2 forwards
of the whole set (minutes per 20 prompts on two CPU threads).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mechscope.engine import Engine, HeadAblation
from mechscope.engine.detectors import DETECTORS, head_scores
from mechscope.engine.massive import massive_activations
from mechscope.engine.prompt_sets import ioi_set
from mechscope.engine.set_runs import run_set, sweep_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load("demo", device="cpu")

    started = time.perf_counter()
    scores = head_scores(engine)
    print(f"head detectors ({'cached' if scores.cached else 'computed'} in {time.perf_counter() - started:.1f} s)")
    for name in DETECTORS:
        top = ", ".join(f"L{layer}.H{head} {value:.2f}" for layer, head, value in scores.top(name, 5))
        print(f"  {name:<17} {top}")

    pset = ioi_set(engine.tokenizer, n=args.rows)
    base = run_set(engine, pset)
    mean = base.mean
    print(f"\nIOI set, {len(pset)} prompts: logit diff IO - S mean {mean:.3f}, std {base.std:.3f}, "
          f"{(base.values > 0).mean():.0%} of rows > 0")
    started = time.perf_counter()
    sweep = sweep_set(engine, pset, source="mean")
    effect = sweep.mean  # [layer, head]: mean over rows of the change under each head's mean ablation
    print(f"mean-ablation sweep over every head: {time.perf_counter() - started:.1f} s")
    order = np.argsort(effect.ravel())
    n_heads = engine.adapter.n_heads
    print("  largest drops: " + ", ".join(
        f"L{i // n_heads}.H{i % n_heads} {effect.ravel()[i]:+.3f}" for i in order[:10]))
    halving = [i for i in order if mean + effect.ravel()[i] <= mean / 2]
    print("  single heads whose mean ablation halves it: "
          + (", ".join(f"L{i // n_heads}.H{i % n_heads}" for i in halving) or "none"))
    chosen: list[HeadAblation] = []
    value = mean
    for i in order[:40]:
        chosen.append(HeadAblation(int(i // n_heads), int(i % n_heads), "mean"))
        value = run_set(engine, pset, interventions=chosen).mean
        if value <= mean / 2:
            break
    names = ", ".join(f"L{iv.layer}.H{iv.head}" for iv in chosen)
    print(f"  greedy (largest single drops first): ablating {len(chosen)} heads together ({names}) "
          f"takes it from {mean:.3f} to {value:.3f}")

    layers = massive_activations(engine, pset.column("clean")[:20])
    print("\nmassive activations (|h| > 100x the layer median) over 20 IOI prompts:")
    for layer in layers:
        if layer.dims:
            dims = ", ".join(f"d{d} (in {c}/20, peak {np.nanmean(p):+.0f}, spread {s:.2f})"
                             for d, c, p, s in zip(layer.dims, layer.counts, layer.peak, layer.spread))
            print(f"  L{layer.layer:<3} median {np.mean(layer.median):.3f}  {dims}"
                  f"{'  constant' if layer.constant else ''}")


if __name__ == "__main__":
    main()
