"""The engine and sessions are usable without a terminal: importing them loads neither textual nor rich."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = [
    "mechscope.engine",
    "mechscope.engine.core",
    "mechscope.engine.sweeps",
    "mechscope.engine.loading",
    "mechscope.engine.model_cache",
    "mechscope.sessions",
    "mechscope.workbench",
    "mechscope.workbench.controller",
    "mechscope.workbench.recorder",
    "mechscope.requests.registry",
]
WORKBENCH_MODULES = [
    "mechscope.requests",
    "mechscope.requests.registry",
    "mechscope.requests.sets",
    "mechscope.workbench",
    "mechscope.workbench.controller",
    "mechscope.workbench.recorder",
    "mechscope.requests.registry",
    "mechscope.requests.kinds",
    "mechscope.workbench.stack",
    "mechscope.workbench.numbers",
    "mechscope.workbench.state",
    "mechscope.workbench.sets",
    "mechscope.requests.tolerance",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_ui(module):
    code = (
        f"import sys, json, importlib; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("module", WORKBENCH_MODULES)
def test_workbench_imports_neither_textual_nor_torch(module):
    """The workbench core runs on any engine (in-process, served, remote): no UI, no torch."""
    code = (
        f"import sys, json, importlib; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('textual', 'rich', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_start_imports_nothing_heavy():
    """`mechscope --help` answers without importing torch, transformers or textual."""
    code = (
        "import sys, json, contextlib, io\n"
        "from mechscope import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'textual') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_workbench_paints_before_torch_is_imported():
    """`mechscope` starts the app before importing torch (a cold import takes seconds); the loader
    thread imports it, so the first screen appears at once."""
    code = (
        "import sys, json\n"
        "import mechscope.tui.app as app_module\n"
        "seen = []\n"
        "app_module.MechscopeApp.run = lambda self: seen.append('torch' in sys.modules) or 0\n"
        "from mechscope import cli\n"
        "code = cli.main([])\n"
        "print(json.dumps({'code': code, 'torch_before_run': seen}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 0, "torch_before_run": [False]}
