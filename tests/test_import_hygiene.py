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
    "mechscope.requests.kinds",
    "mechscope.workbench.stack",
    "mechscope.workbench.numbers",
    "mechscope.workbench.state",
    "mechscope.workbench.sets",
    "mechscope.workbench.sweeps",
    "mechscope.workbench.generation",
    "mechscope.workbench.pin",
    "mechscope.workbench.vectors",
    "mechscope.workbench.typed_values",
    "mechscope.requests.tolerance",
]


def new_imports(modules: list[str], roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Each module's import in one fresh interpreter, in order: the modules under `roots` that import
    brought in (one process for all of them: each would otherwise import torch anew)."""
    code = (
        "import sys, json, importlib\n"
        f"roots = {roots!r}\n"
        "loaded = lambda: {m for m in sys.modules if m.split('.')[0] in roots}\n"
        "found = {}\n"
        f"for module in {modules!r}:\n"
        "    before = loaded()\n"
        "    importlib.import_module(module)\n"
        "    found[module] = sorted(loaded() - before)\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def core_imports() -> dict[str, list[str]]:
    return new_imports(CORE_MODULES, ("textual", "rich"))


@pytest.fixture(scope="module")
def workbench_imports() -> dict[str, list[str]]:
    return new_imports(WORKBENCH_MODULES, ("textual", "rich", "torch", "transformers"))


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_ui(module, core_imports):
    assert core_imports[module] == []


@pytest.mark.parametrize("module", WORKBENCH_MODULES)
def test_workbench_imports_neither_textual_nor_torch(module, workbench_imports):
    """The workbench core runs on any engine (in-process, served, remote): no UI, no torch."""
    assert workbench_imports[module] == []


def test_the_check_sees_a_ui_import():
    """The one-process check names the module whose import brought the UI in."""
    found = new_imports(["json", "rich.text", "mechscope.requests.kinds"], ("rich",))
    assert found["json"] == [] and "rich.text" in found["rich.text"] and found["mechscope.requests.kinds"] == []


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
