"""Real `mechscope serve` subprocesses on tiny random models saved as HF folders."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
LONG_PROMPT = " ".join([PROMPT] * 8)  # a resid sweep over it lasts a while (for cancel tests)
LONG_CORRUPT = " ".join([CORRUPT] * 8)


def save_tiny(folder: Path, **overrides) -> Path:
    from mechscope.engine.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", **overrides).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def server_env(runtime: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MECHSCOPE_RUNTIME_DIR=str(runtime), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def start_server(folder: Path, runtime: Path, *where: str, log: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """`mechscope serve --model folder *where` (with `env` on top of the test's environment),
    returned once its socket accepts connections."""
    args = list(where) or ["--name", "test"]
    socket_path = (Path(args[1]) if args[0] == "--socket" else runtime / f"{args[1]}.sock")
    log = log or runtime.parent / f"{socket_path.stem}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechscope", "serve", "--model", str(folder), "--device", "cpu",
         "--dtype", "float32", *args],
        env={**server_env(runtime), **(env or {})}, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(socket_path))
                return proc
            except OSError:  # not there yet, or a stale socket of a dead server
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def one_thread():
    """The in-process reference engine computes with one thread, like the servers do."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same(a, b, path: str = "result") -> None:
    """Exact equality (array bits included) ignoring wall-clock `seconds` fields."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: values differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if f.name != "seconds":
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
