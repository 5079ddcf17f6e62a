"""The nnsight benchmark runs on a tiny model and prints a ratio per figure for each way of running."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("nnsight", reason="the nnsight backend needs the optional nnsight extra")

from mechscope.engine.testing import tiny_model, tiny_tokenizer  # noqa: E402

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "nnsight_backend.py"


def test_benchmark_prints_a_ratio_per_figure_and_column(capsys):
    spec = importlib.util.spec_from_file_location("nnsight_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.bench("tiny", tiny_model("gpt2"), tiny_tokenizer(), module.CLEAN, module.CORRUPT,
                         repeats=2)
    assert list(table) == ["run, no interventions", "toggle one head ablation at L1",
                           "head-patching sweep", "AtP over every head"]
    assert all(set(row) == set(module.COLUMNS) and min(row.values()) > 0 for row in table.values())
    assert "head-patching sweep" in capsys.readouterr().out
