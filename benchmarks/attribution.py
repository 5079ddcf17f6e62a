"""Grade each attribution estimator against exact head patching, with its cost as a ratio of one forward.

    python benchmarks/attribution.py               # the demo IOI pair and a 20-prompt IOI set
    python benchmarks/attribution.py --rows 50     # a larger set

Exact: metric(clean with head z := z(corrupted)) - metric(clean) for every head (the engine's head
sweep for the pair, `sweep_set` for the set, mean over rows). Each estimator is graded over all
heads: Spearman and Pearson against the exact values, Spearman of magnitudes (|est| vs |exact|:
the only fair grade for GradDrop, whose scores are magnitudes), and recall of the exact top 10 by
magnitude among the estimator's top 10. Cost: the estimator's wall time over the median time of one
plain forward of the same prompts (no hooks, no grad), measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from mechscope.engine import Engine, Metric
from mechscope.engine.estimators import Estimate, atp, atp_star, eap_ig, graddrop
from mechscope.engine.prompt_sets import PromptRow, PromptSet, ioi_set
from mechscope.engine.set_runs import encode, forward, sweep_set

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
PAIR = PromptSet("demo IOI pair", (PromptRow(CLEAN, CORRUPT, " Mary", " John"),))


def forward_seconds(engine: Engine, pset: PromptSet, repeats: int = 5) -> float:
    batch = encode(engine, pset.column("clean"))
    times = []
    with torch.no_grad():
        forward(engine, batch, [])
        for _ in range(repeats):
            start = time.perf_counter()
            forward(engine, batch, [])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def grades(estimate: np.ndarray, exact: np.ndarray, k: int = 10) -> dict[str, float]:
    e, x = estimate.ravel(), exact.ravel()
    top_exact = set(np.argsort(-np.abs(x))[:k].tolist())
    top_est = set(np.argsort(-np.abs(e))[:k].tolist())
    return {
        "spearman": float(stats.spearmanr(e, x).statistic),
        "pearson": float(stats.pearsonr(e, x).statistic),
        "spearman_abs": float(stats.spearmanr(np.abs(e), np.abs(x)).statistic),
        f"recall@{k}": len(top_exact & top_est) / k,
    }


def estimators(steps: tuple[int, ...]) -> list[tuple[str, Callable[[Engine, PromptSet], Estimate]]]:
    out: list[tuple[str, Callable[[Engine, PromptSet], Estimate]]] = [
        ("AtP", atp), ("AtP* (QK fix)", atp_star), ("GradDrop", graddrop)]
    for n in steps:
        out.append((f"EAP-IG {n} steps", lambda engine, pset, n=n: eap_ig(engine, pset, steps=n)))
    return out


def grade_set(engine: Engine, pset: PromptSet, exact: np.ndarray, steps: tuple[int, ...]) -> list[dict]:
    """One row of figures per estimator."""
    rows = []
    for name, fn in estimators(steps):
        fn(engine, pset)  # warm-up (allocations, registrations)
        plain_before = forward_seconds(engine, pset)
        estimate = fn(engine, pset)
        plain_after = forward_seconds(engine, pset)
        plain = statistics.median([plain_before, plain_after])
        rows.append({"name": name, **grades(estimate.mean, exact), "cost": estimate.seconds / plain})
    return rows


def print_table(title: str, rows: list[dict], exact_cost: float) -> None:
    print(f"\n{title}  (exact head patching: {exact_cost:.1f}x a forward)")
    print(f"  {'estimator':<20} {'Spearman':>9} {'Pearson':>8} {'Sp. |x|':>8} {'top-10':>7} {'cost':>8}")
    for row in rows:
        print(f"  {row['name']:<20} {row['spearman']:>9.3f} {row['pearson']:>8.3f} {row['spearman_abs']:>8.3f}"
              f" {row['recall@10']:>7.1f} {row['cost']:>7.1f}x")


def run(engine: Engine, sets: list[PromptSet], steps: tuple[int, ...]) -> dict[str, list[dict]]:
    out = {}
    for pset in sets:
        started = time.perf_counter()
        if len(pset) == 1:
            row = pset.rows[0]
            exact = engine.sweep("head", row.clean, row.corrupted, Metric("logit_diff", row.target, row.foil)).values
        else:
            exact = sweep_set(engine, pset).mean
        exact_cost = (time.perf_counter() - started) / forward_seconds(engine, pset)
        rows = grade_set(engine, pset, np.asarray(exact, dtype=np.float64), steps)
        a = engine.adapter
        print_table(f"{pset.name}: {len(pset)} prompt(s), {a.n_layers * a.n_heads} heads", rows, exact_cost)
        out[pset.name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20, help="IOI set size")
    parser.add_argument("--steps", default="2,4,8", help="EAP-IG step counts, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load("demo", device="cpu")
    steps = tuple(int(s) for s in args.steps.split(","))
    run(engine, [PAIR, ioi_set(engine.tokenizer, n=args.rows)], steps)


if __name__ == "__main__":
    main()
