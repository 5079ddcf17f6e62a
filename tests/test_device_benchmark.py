"""benchmarks/device.py runs on a tiny model (--device cpu --quick) and prints one table with every operation."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

DEVICE = Path(__file__).resolve().parent.parent / "benchmarks" / "device.py"
ALLOWED = {"torch", "transformers", "accelerate", "numpy", "safetensors", "mechscope"}
# mechscope's own dependencies that a bare GPU image lacks: the run must not need them, even lazily
ABSENT_ON_A_GPU_IMAGE = ("platformdirs", "gguf", "textual", "rich", "starlette", "uvicorn", "nnsight")
# Runs device.py with those packages unimportable (a None entry in sys.modules is how Python marks one absent).
WITHOUT_THEM = (f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT_ON_A_GPU_IMAGE!r})); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_device_benchmark_prints_one_table_with_every_operation():
    command = [sys.executable, "-c", WITHOUT_THEM, str(DEVICE), "--device", "cpu", "--quick", "--threads", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert [c.strip() for c in lines[header].split("|")] == ["model", "operation", "ms", "x forward", "peak MiB"]
    rows = [[c.strip() for c in line.split("|")] for line in lines[header + 2:] if line.count("|") == 4]
    operations = [operation for _, operation, _, _, _ in rows]
    assert operations == [
        "plain forward, pair (14 tokens)", "run, uncached", "toggle one head at L1", "head sweep (12 heads)",
        "AtP, pair", "estimate+verify, pair", "plain forward, set (4 rows, <= 51 tokens)", "set sweep (4 rows)",
        "estimate+verify, set (4 rows)"]
    assert {model for model, *_ in rows} == {"tiny-llama 0.1M"}
    for _, _, ms, ratio, peak in rows:
        assert float(ms) > 0 and float(ratio) > 0
        assert peak == "-"  # memory is measured on CUDA only
    assert "fit and ran: tiny-llama" in proc.stdout
    check = next(line for line in lines if line.strip().startswith("tiny-llama 0.1M: largest difference"))
    assert float(check.split("largest difference ")[1].split()[0]) < 1e-3, check
    assert check.endswith("same top token: True")


def test_device_benchmark_imports_only_what_a_bare_gpu_image_has():
    tree = ast.parse(DEVICE.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
            if node.module.startswith("mechscope"):
                assert node.module.startswith("mechscope.engine"), node.module
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= ALLOWED, third_party - ALLOWED
