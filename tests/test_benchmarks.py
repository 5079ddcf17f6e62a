"""The benchmark scripts run (on tiny models, a few repeats) and print a ratio or latency per figure."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from mechscope.engine.testing import tiny_model, tiny_tokenizer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_engine_benchmark_prints_a_ratio_per_figure(capsys):
    spec = importlib.util.spec_from_file_location("engine_benchmark", BENCHMARKS / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bench("tiny", tiny_model("llama"), tiny_tokenizer(), module.CLEAN, module.CORRUPT, repeats=2)
    out = capsys.readouterr().out
    ratios = re.findall(r"^  (.+?)\s+([\d.]+) ms\s+([\d.]+)x  \(target", out, re.M)
    assert [label.strip() for label, _, _ in ratios] == [
        "run, no interventions (uncached)", "toggle one head ablation at L1",
        "head-patching sweep (12 heads)", "AtP over every head", "path sweep into L2.H3.q"]
    assert all(float(ms) > 0 and float(ratio) > 0 for _, ms, ratio in ratios)
    assert re.search(r"extra memory held by the engine's caches: [\d.]+ MiB", out)


def test_engine_benchmark_prints_the_function_vector_ratio(capsys):
    spec = importlib.util.spec_from_file_location("engine_benchmark", BENCHMARKS / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bench_function_vector("tiny", tiny_model("llama"), tiny_tokenizer(), rows=3, repeats=1)
    out = capsys.readouterr().out
    ratio = re.search(r"^  function vector \(AIE, vector, acc\)\s+([\d.]+) ms\s+([\d.]+)x", out, re.M)
    assert ratio is not None and float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0, out


def test_tui_benchmark_prints_latencies(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "tui.py"), "--repeats", "3", "--size", "80x24"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MECHSCOPE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(r"^  (.+?)\s+median\s+([\d.]+) ms\s+p90\s+([\d.]+) ms", proc.stdout, re.M)
    assert [label.strip() for label, _, _ in lines] == ["toggle ablation (space)", "grid cursor (j/k)"]
    assert all(float(median) > 0 for _, median, _ in lines)


def test_replay_benchmark_prints_the_replay_against_the_recorded_steps(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "replay.py"), "--tiny", "--rows", "3"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MECHSCOPE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(re.findall(r"^  recorded \S+\s+[\d.]+ s$", proc.stdout, re.M)) == 33
    recorded = re.search(r"recorded steps' own durations\s+([\d.]+) s", proc.stdout)
    replayed = re.search(r"replay --check \(after loading\)\s+([\d.]+) s\s+([\d.]+)x", proc.stdout)
    assert recorded and replayed, proc.stdout[-2000:]
    assert float(recorded.group(1)) > 0 and float(replayed.group(2)) > 0
    assert re.search(r"progress lines on stderr: [1-9]", proc.stdout)
