"""What offloading costs: engine timings under accelerate device maps, as ratios against a plain forward.

    python benchmarks/placement.py            # the demo model
    python benchmarks/placement.py --tiny     # a tiny random llama (seconds)

Each placement loads the same folder with a device map (CPU only here: half the layers on disk, then
all of them); every figure is a median over repeats, divided by the median of a plain forward of the
single-device model timed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mechscope.engine import Engine, HeadAblation, Metric

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", target=" Mary", foil=" John")


def median_ratio(plain: Callable[[], object], fn: Callable[[], object], repeats: int,
                 setup: Callable[[], object] | None = None) -> tuple[float, float]:
    fn_times, plain_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        plain()
        plain_times.append(time.perf_counter() - start)
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        fn_times.append(time.perf_counter() - start)
    fn_median = statistics.median(fn_times)
    return fn_median, fn_median / statistics.median(plain_times)


def layers_on(engine: Engine, places: list[str]) -> dict[str, str]:
    """A device map: decoder layer i on places[i], every other module (embeddings, final norm,
    unembedding) on the CPU."""
    layers_path = engine.adapter.family.layers
    parts = layers_path.split(".")
    device_map = {}
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        for name, _ in engine.model.get_submodule(parent).named_children():
            full = f"{parent}.{name}" if parent else name
            if full != ".".join(parts[: depth + 1]):
                device_map[full] = "cpu"
    device_map.update({f"{layers_path}.{i}": place for i, place in enumerate(places)})
    return device_map


def device_maps(engine: Engine) -> dict[str, dict[str, str] | None]:
    n = engine.adapter.n_layers
    return {"single device": None,
            "half the layers on disk": layers_on(engine, ["cpu" if i < n // 2 else "disk" for i in range(n)]),
            "every layer on disk": layers_on(engine, ["disk"] * n)}


def _figures(engine: Engine, middle: int) -> list[tuple[str, Callable[[], object], Callable[[], object] | None]]:
    def clear() -> None:
        engine.passes.clear()

    n_heads = engine.adapter.n_layers * engine.adapter.n_heads
    return [
        ("run, no interventions (uncached)", lambda: engine.run(CLEAN, metric=METRIC), clear),
        (f"toggle one head ablation at L{middle}",
         lambda: engine.run(CLEAN, [HeadAblation(middle, 0)], metric=METRIC), None),
        (f"head-patching sweep ({n_heads} heads)", lambda: engine.sweep("head", CLEAN, CORRUPT, METRIC), None),
    ]


def bench(folder: Path, repeats: int) -> None:
    single = Engine.load(str(folder), device="cpu")
    ids = torch.tensor([single.tokenize(CLEAN)[0]])
    middle = single.adapter.n_layers // 2

    def plain() -> None:
        with torch.no_grad():
            single.model(ids)

    for label, device_map in device_maps(single).items():
        with tempfile.TemporaryDirectory() as offload:
            engine = single if device_map is None else Engine.load(
                str(folder), device="cpu", device_map=device_map, offload_folder=offload)
            print(f"{label} ({engine.info.placement}):")

            figures = _figures(engine, middle)
            engine.run(CLEAN, metric=METRIC)
            for name, fn, setup in figures:
                seconds, ratio = median_ratio(plain, fn, repeats, setup)
                print(f"  {name:40} {seconds * 1000:9.1f} ms  {ratio:7.2f}x a plain forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random llama instead of the demo")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.tiny:
        from mechscope.engine.testing import tiny_model, tiny_tokenizer

        with tempfile.TemporaryDirectory() as folder:
            tiny_model("llama").save_pretrained(folder)
            tiny_tokenizer().save_pretrained(folder)
            bench(Path(folder), args.repeats)
    else:
        from mechscope.engine.model_cache import demo_model_dir

        bench(demo_model_dir(), args.repeats)


if __name__ == "__main__":
    main()
