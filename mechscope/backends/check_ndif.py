"""Check the NDIF backend against the real service: the same requests on NDIF and here, and their drift.

    NDIF_API_KEY=... python -m mechscope.backends.check_ndif openai-community/gpt2

Runs an IOI prompt with a head ablation (prediction, metric, logit lens, attention pattern) and a
head-patching sweep on NDIF, then, unless --no-local, the same requests with the weights loaded
here (the hub checkpoint, fetched by Hugging Face if not cached), and prints the largest
difference; exit status 1 when it exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mechscope.engine.errors import MechscopeError
from mechscope.engine.interventions import HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.views import Views

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")


def requests(engine) -> dict[str, np.ndarray]:
    """The checked outcomes of one engine, as arrays keyed by name."""
    layer = engine.info.n_layers // 2
    views = Views(attention=(f"L{layer}.H0",), logit_lens=True)
    started = time.perf_counter()
    run = engine.run(CLEAN, [HeadAblation(layer, 0)], views, METRIC)
    sweep = engine.sweep("head", CLEAN, CORRUPT, METRIC)
    print(f"  {engine.backend.status}: run + head sweep in {time.perf_counter() - started:.1f} s; "
          f"top {run.top[0].text!r}, logit diff {run.metric:.3f}")
    return {"logits": run.logits, "baseline": run.baseline.logits,
            "lens": run.logit_lens.top_probs, "attention": next(iter(run.attention.values())),
            "sweep": sweep.values}


def main(argv: list[str] | None = None, load=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="openai-community/gpt2", help="a repo id hosted on NDIF")
    parser.add_argument("--no-local", action="store_true", help="only run on NDIF")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="largest accepted difference (NDIF may serve bfloat16 weights)")
    args = parser.parse_args(argv)
    if load is None:
        from mechscope.backends import load_backend as load
    try:
        print(f"NDIF, {args.model}:")
        remote = requests(load(args.model, backend="ndif"))
        if args.no_local:
            return 0
        print("here:")
        local = requests(load(args.model, backend="nnsight", device="cpu", dtype="float32"))
    except MechscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    drift = {name: float(np.abs(remote[name] - local[name]).max()) for name in remote}
    worst = max(drift.values())
    print("largest difference: " + ", ".join(f"{k} {v:.2e}" for k, v in drift.items()))
    print("OK" if worst <= args.tolerance else f"DRIFT over {args.tolerance:g}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
