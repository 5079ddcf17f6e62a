"""Grade each attribution estimator against exact head patching, with its cost as a ratio of one forward.

    python benchmarks/attribution.py               # the demo IOI pair and a 20-prompt IOI set
    python benchmarks/attribution.py --rows 50     # a larger set

Exact: metric(clean with head z := z(corrupted)) - metric(clean) for every head (the engine's head
sweep for the pair, `sweep_set` for the set, mean over rows). Each estimator is graded over all
heads: Spearman and Pearson against the exact values, Spearman of magnitudes (|est| vs |exact|:
the only fair grade for GradDrop, whose scores are magnitudes), and recall of the exact top 10 by
magnitude among the estimator's top 10. Cost: the estimator's wall time over the median time of one
plain forward of the same prompts (no hooks, no grad), measured in the same run.

Estimate-plus-verify (`verification.estimate_and_verify`, the default attribution path) is graded on
its reported values (the estimate with the verified heads' exact values in place): recall@10, the
number of heads it verified and its whole cost (estimate and verification).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from mechscope.engine import Engine, Metric
from mechscope.engine.estimators import Estimate, atp, atp_star, eap_ig, graddrop
from mechscope.engine.prompt_sets import PromptRow, PromptSet, ioi_set
from mechscope.engine.set_batches import encode, forward
from mechscope.engine.set_runs import sweep_set
from mechscope.engine.verification import estimate_and_verify, recall_at

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


def estimators(steps: tuple[int, ...], only: tuple[str, ...] = ()) -> list[tuple[str, Callable[[Engine, PromptSet], Estimate]]]:
    """The estimators graded (`only`: those whose names start with one of these, case-insensitive)."""
    out: list[tuple[str, Callable[[Engine, PromptSet], Estimate]]] = [
        ("AtP", atp), ("AtP* (QK fix)", atp_star), ("GradDrop", graddrop)]
    for n in steps:
        out.append((f"EAP-IG {n} steps", lambda engine, pset, n=n: eap_ig(engine, pset, steps=n)))
    if only:
        out = [(name, fn) for name, fn in out if any(name.lower().startswith(o.lower()) for o in only)]
    return out


def grade_set(engine: Engine, pset: PromptSet, exact: np.ndarray, steps: tuple[int, ...],
              only: tuple[str, ...] = ()) -> list[dict]:
    """One row of figures per estimator."""
    rows = []
    for name, fn in estimators(steps, only):
        fn(engine, pset)  # warm-up (allocations, registrations)
        plain_before = forward_seconds(engine, pset)
        estimate = fn(engine, pset)
        plain_after = forward_seconds(engine, pset)
        plain = statistics.median([plain_before, plain_after])
        rows.append({"name": name, **grades(estimate.mean, exact), "cost": estimate.seconds / plain})
    return rows


def grade_verified(engine: Engine, pset: PromptSet, exact: np.ndarray, repeats: int = 3) -> dict:
    """Estimate-plus-verify: recall@10 of its values, heads verified, median cost over `repeats`."""
    estimate_and_verify(engine, pset)  # warm-up
    costs, result = [], None
    for _ in range(repeats):
        plain_before = forward_seconds(engine, pset)
        result = estimate_and_verify(engine, pset)
        plain_after = forward_seconds(engine, pset)
        costs.append(result.seconds / statistics.median([plain_before, plain_after]))
    assert result is not None
    return {"name": "AtP + verify (auto)", **grades(result.values, exact), "recall@10": recall_at(result.values, exact),
            "cost": statistics.median(costs), "verified": len(result.exact)}


def print_table(title: str, rows: list[dict], exact_cost: float) -> None:
    cost = "" if math.isnan(exact_cost) else f"  (exact head patching: {exact_cost:.1f}x a forward)"
    print(f"\n{title}{cost}")
    print(f"  {'estimator':<20} {'Spearman':>9} {'Pearson':>8} {'Sp. |x|':>8} {'top-10':>7} {'cost':>8}")
    for row in rows:
        verified = f"  ({row['verified']} heads verified)" if "verified" in row else ""
        print(f"  {row['name']:<20} {row['spearman']:>9.3f} {row['pearson']:>8.3f} {row['spearman_abs']:>8.3f}"
              f" {row['recall@10']:>7.1f} {row['cost']:>7.1f}x{verified}")


def exact_values(engine: Engine, pset: PromptSet) -> np.ndarray:
    """Exact head patching [layer, head]: the engine's head sweep for a pair, `sweep_set`'s mean for a set."""
    if len(pset) == 1:
        row = pset.rows[0]
        return np.asarray(engine.sweep("head", row.clean, row.corrupted,
                                       Metric("logit_diff", row.target, row.foil)).values, dtype=np.float64)
    return np.asarray(sweep_set(engine, pset).mean, dtype=np.float64)


def run(engine: Engine, sets: list[PromptSet], steps: tuple[int, ...], only: tuple[str, ...] = (),
        known_exact: dict[str, np.ndarray] | None = None) -> dict[str, list[dict]]:
    """Grade on each set; `known_exact` (set name -> [layer, head]) skips computing those exact values."""
    out = {}
    for pset in sets:
        exact_cost = float("nan")
        if known_exact and pset.name in known_exact:
            exact = known_exact[pset.name]
        else:
            started = time.perf_counter()
            exact = exact_values(engine, pset)
            exact_cost = (time.perf_counter() - started) / forward_seconds(engine, pset)
        rows = grade_set(engine, pset, exact, steps, only)
        if not only or any("verify".startswith(o.lower()) for o in only):
            rows.append(grade_verified(engine, pset, exact))
        a = engine.adapter
        print_table(f"{pset.name}: {len(pset)} prompt(s), {a.n_layers * a.n_heads} heads", rows, exact_cost)
        out[pset.name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20, help="IOI set size")
    parser.add_argument("--steps", default="2,4,8", help="EAP-IG step counts, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="grade only these, comma-separated name prefixes "
                                                   "(atp, atp*, graddrop, eap-ig, verify)")
    parser.add_argument("--exact", default="", help="an .npz of exact values per set name (read if it exists, "
                                                    "else written): the exact sweeps are the slow part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load("demo", device="cpu")
    steps = tuple(int(s) for s in args.steps.split(","))
    sets = [PAIR, ioi_set(engine.tokenizer, n=args.rows)]
    known: dict[str, np.ndarray] = {}
    if args.exact and Path(args.exact).exists():
        with np.load(args.exact, allow_pickle=False) as saved:
            known = {name: np.asarray(saved[name], dtype=np.float64) for name in saved.files}
    elif args.exact:
        known = {pset.name: exact_values(engine, pset) for pset in sets}
        np.savez(args.exact, **known)
    only = tuple(o.strip() for o in args.only.split(",") if o.strip())
    run(engine, sets, steps, only, known)


if __name__ == "__main__":
    main()
