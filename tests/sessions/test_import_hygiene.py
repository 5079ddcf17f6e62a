"""`mechscope.sessions` never imports a UI toolkit; its CLI module imports nothing heavy at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_MODULES = ("mechscope.sessions", "mechscope.sessions.store", "mechscope.sessions.replaying",
                   "mechscope.sessions.export")


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True, timeout=120)
    return {name.split(".")[0] for name in json.loads(proc.stdout)}


@pytest.mark.parametrize("module", SESSION_MODULES)
def test_sessions_never_import_a_ui(module: str) -> None:
    loaded = _loaded_after(f"import {module}\nfrom mechscope.sessions import Session, replay")
    assert not loaded & {"textual", "rich"}


def test_cli_start_is_light() -> None:
    loaded = _loaded_after("import mechscope.cli\nmechscope.cli.build_parser()")
    assert not loaded & {"torch", "transformers", "textual", "rich", "numpy", "safetensors"}
