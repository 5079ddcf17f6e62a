"""benchmarks/features.py runs on a tiny model and prints each figure."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "features.py"


def test_features_benchmark_prints_throughputs_and_ratios(capsys):
    spec = importlib.util.spec_from_file_location("features_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--width", "64", "--k", "4", "--seqs", "2", "--seq-len", "16",
                        "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("plain full forward", "forward stopped at L1.resid_post", "TopK step (forward+backward)",
                  "training (both)", "training from held values"):
        assert re.search(rf"{re.escape(label)}\s+[\d.]+ tok/s", out), label
    assert re.search(r"features view .* [\d.]+x a plain forward", out)
    assert re.search(r"one feature clamped .* [\d.]+x a plain forward", out)
