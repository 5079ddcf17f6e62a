"""The attribution benchmark grades every estimator (on a tiny model) and prints one table row each."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from mechscope.engine.prompt_sets import PromptRow, PromptSet, ioi_set
from mechscope.engine.testing import tiny_engine

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attribution_benchmark_prints_a_grade_per_estimator(capsys):
    module = _load("attribution")
    engine = tiny_engine("llama")
    pair = PromptSet("pair", (PromptRow(module.CLEAN, module.CORRUPT, " Mary", " John"),))
    out = module.run(engine, [pair, ioi_set(engine.tokenizer, n=4)], steps=(2,))
    text = capsys.readouterr().out
    rows = re.findall(r"^  (AtP|AtP\* \(QK fix\)|GradDrop|EAP-IG 2 steps)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)"
                      r"\s+([\d.]+)\s+([\d.]+)x$", text, re.M)
    assert [r[0] for r in rows] == ["AtP", "AtP* (QK fix)", "GradDrop", "EAP-IG 2 steps"] * 2
    assert all(-1 <= float(r[1]) <= 1 and float(r[5]) > 0 for r in rows)
    assert set(out) == {"pair", "ioi-4"}
    verified = re.findall(r"^  AtP \+ verify \(auto\)\s+.*\s+([\d.]+)\s+([\d.]+)x  \((\d+) heads verified\)$", text, re.M)
    assert len(verified) == 2
    assert all(0 <= float(recall) <= 1 and float(cost) > 0 and int(n) >= 10 for recall, cost, n in verified)


def test_grades_of_a_perfect_estimate():
    module = _load("attribution")
    exact = [[3.0, -1.0, 0.5], [0.1, -2.0, 0.0]]
    import numpy as np

    grades = module.grades(np.array(exact), np.array(exact), k=2)
    assert grades == pytest.approx({"spearman": 1.0, "pearson": 1.0, "spearman_abs": 1.0, "recall@2": 1.0})
