"""The nnsight backend's speed beside the native engine's, as ratios against a plain forward (CPU).

    python benchmarks/nnsight_backend.py            # GPT-2-small-shaped random model and the demo
    python benchmarks/nnsight_backend.py --no-demo  # only the random model

Timed as in `benchmarks/engine.py`: each figure is a median over repeats, alternated with a plain
Hugging Face forward of the same weights, and the ratio is engine time over plain time. Columns:
the native engine (which keeps the clean pass and recomputes from the first edited layer), nnsight
run locally, and nnsight with remote="local" (each request serialised and deserialised as for
NDIF, then run here: what a remote request costs on this side, without the network).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import CLEAN, CORRUPT, METRIC, gpt2_small_random, paired_medians  # noqa: E402

from mechscope.engine import Engine, HeadAblation  # noqa: E402

COLUMNS = ("native", "nnsight", "nnsight remote=local")


def _figures(engine, clean: str, corrupt: str, repeats: int, plain: Callable[[], object],
             clear: Callable[[], None]) -> dict[str, tuple[float, float]]:
    beside_plain = functools.partial(paired_medians, plain)
    mid = engine.adapter.n_layers // 2
    n_heads = engine.adapter.n_heads
    figures = {"run, no interventions": beside_plain(lambda: engine.run(clean), repeats, setup=clear)}
    engine.run(clean, metric=METRIC)  # the native engine keeps this clean pass, as in the live UI
    toggles = iter(range(10**6))
    figures[f"toggle one head ablation at L{mid}"] = beside_plain(
        lambda: engine.run(clean, [HeadAblation(mid, next(toggles) % n_heads)], metric=METRIC), repeats)
    sweep_repeats = max(1, repeats // 5)
    figures["head-patching sweep"] = beside_plain(lambda: engine.sweep("head", clean, corrupt, METRIC),
                                                  sweep_repeats, setup=clear)
    figures["AtP over every head"] = beside_plain(lambda: engine.sweep("atp", clean, corrupt, METRIC),
                                                  sweep_repeats, setup=clear)
    return figures


def bench(name: str, model, tokenizer, clean: str, corrupt: str, repeats: int) -> dict:
    """Print and return {figure: {column: ratio}} for the three ways of running."""
    from mechscope.backends.nnsight_engine import NNsightEngine

    ids = torch.tensor([tokenizer(clean).input_ids])
    plain_model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    plain_model.load_state_dict(model.state_dict())
    plain_model.eval()
    plain_model.set_attn_implementation("sdpa")

    def plain_forward():
        with torch.no_grad():
            plain_model(ids)

    plain_forward()
    native = Engine(model, tokenizer, source=name)
    results = {"native": _figures(native, clean, corrupt, repeats, plain_forward, native.clear_caches)}
    for column, remote in (("nnsight", False), ("nnsight remote=local", "local")):
        copy_model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
        copy_model.load_state_dict(model.state_dict())
        backend = NNsightEngine(copy_model.eval(), tokenizer, source=name, remote=remote)
        results[column] = _figures(backend, clean, corrupt, repeats, plain_forward, backend.clear_caches)

    a = native.adapter
    print(f"\n{name}: {a.n_layers} layers x {a.n_heads} heads, d_model {a.d_model}, vocab "
          f"{a.vocab_size}, {ids.shape[1]}-token prompt, {torch.get_num_threads()} threads")
    plains = [p for figures in results.values() for _, p in figures.values()]
    print(f"  plain HF forward {statistics.median(plains) * 1e3:.2f} ms; ratios (time / plain forward):")
    print(f"  {'':36}" + "".join(f"{c:>22}" for c in COLUMNS))
    table: dict[str, dict[str, float]] = {}
    for figure in results["native"]:
        table[figure] = {c: results[c][figure][0] / results[c][figure][1] for c in COLUMNS}
        cells = "".join(f"{results[c][figure][0] * 1e3:12.1f} ms {table[figure][c]:6.2f}x" for c in COLUMNS)
        print(f"  {figure:36}{cells}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model, tokenizer = gpt2_small_random()
    clean = "When Mary and John went to the store, John gave a drink to Mary and the cat sat"
    corrupt = "When Mary and John went to the store, Mary gave a drink to Mary and the cat sat"
    bench("GPT-2-small-shaped random model", model, tokenizer, clean, corrupt, args.repeats)
    if not args.no_demo:
        from mechscope.engine.loading import load_model

        loaded = load_model("demo", device="cpu", dtype="float32")
        bench("demo (SmolLM2-135M-Instruct)", loaded.model, loaded.tokenizer, CLEAN, CORRUPT, args.repeats)


if __name__ == "__main__":
    main()
