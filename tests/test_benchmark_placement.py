"""The placement benchmark runs on a tiny model and prints a ratio per figure and placement."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mechscope.engine.testing import tiny_model, tiny_tokenizer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_placement_benchmark_prints_a_ratio_per_figure(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("placement_benchmark", BENCHMARKS / "placement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    module.bench(tmp_path, repeats=1)
    out = capsys.readouterr().out
    assert re.findall(r"^(.+) \((.+)\):$", out, re.M) == [
        ("single device", "cpu L0–2"), ("half the layers on disk", "cpu L0 · disk L1–2"),
        ("every layer on disk", "disk L0–2")]
    ratios = re.findall(r"^  (.+?)\s+([\d.]+) ms\s+([\d.]+)x a plain forward", out, re.M)
    assert len(ratios) == 9 and all(float(ratio) > 0 for _, _, ratio in ratios)
