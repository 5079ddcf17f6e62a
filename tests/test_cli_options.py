"""Options before a sub-command are honoured or refused; bad model paths are refused before torch loads."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechscope import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv, reason", [
    (["--model", "/nonexistent", "inspect", "hi"], "no such file or folder: /nonexistent"),
    (["inspect", "--model", "/nonexistent", "hi"], "no such file or folder: /nonexistent"),
    (["--model", "./notamodel", "replay", "X"], "no such file or folder: ./notamodel"),
    (["--dtype", "int8", "inspect", "hi"], "unknown dtype 'int8'"),
    (["inspect", "--dtype", "int8", "hi"], "unknown dtype 'int8'"),
    (["--device", "tpu", "inspect", "hi"], "unknown device 'tpu'"),
    (["--model", "/nonexistent"], "no such file or folder"),
    (["--model", "/nonexistent", "sessions"], "does not apply to `mechscope sessions`"),
    (["--dtype", "float16", "export", "x"], "does not apply to `mechscope export`"),
    (["--session", "s", "inspect"], "--session applies to the workbench only"),
    (["--session", "bad/name"], "bad session name"),
])
def test_options_before_or_after_a_sub_command_are_checked(argv: list[str], reason: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert reason in _refused(argv, capsys)


def test_a_file_or_folder_that_is_not_a_model_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert "not a .gguf" in _refused(["--model", str(tmp_path / "weights.bin"), "inspect"], capsys)
    assert "without config.json" in _refused(["--model", str(tmp_path), "inspect"], capsys)


@pytest.mark.parametrize("value", ["-5", "0", "abc"])
def test_top_k_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "--top-k", value])
    assert exit_info.value.code == 2
    assert "--top-k" in capsys.readouterr().err


def test_a_model_given_before_the_sub_command_is_used(tmp_path: Path, capsys, monkeypatch) -> None:
    from mechscope.engine.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    assert cli.main(["--model", str(tmp_path), "--dtype", "float32", "--device", "cpu",
                     "inspect", "hi", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert f"model {tmp_path.name} (" in out and "cpu, float32)" in out
    import torch

    if not torch.cuda.is_available():
        message = _refused(["--device", "cuda", "--model", str(tmp_path), "inspect", "hi"], capsys)
        assert "cuda" in message and "not available" in message


def test_a_bad_model_path_is_refused_before_torch_is_imported() -> None:
    code = ("import sys, json\n"
            "from mechscope import cli\n"
            "codes = [cli.main(['--model', '/nonexistent', 'inspect', 'hi']),\n"
            "         cli.main(['--model', './notamodel', 'replay', 'X'])]\n"
            "print(json.dumps([codes, 'torch' in sys.modules]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[2, 2], False]


def test_the_workbench_gets_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_run_app(args) -> int:
        seen.update(vars(args))
        return 0

    import mechscope.tui.app as app

    monkeypatch.setattr(app, "run_app", fake_run_app)
    assert cli.main(["--device", "cpu", "--session", "s-1"]) == 0
    assert (seen["model"], seen["device"], seen["dtype"], seen["session"]) == ("demo", "cpu", "auto", "s-1")


def test_a_sub_command_is_one_module_and_one_registry_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "hello_command.py").write_text(
        "def register(subparsers):\n"
        "    parser = subparsers.add_parser('hello')\n"
        "    parser.set_defaults(run=lambda args: 7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "hello_command"])
    assert cli.main(["hello"]) == 7


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_sessions_hold_no_presentation_and_never_import_the_cli() -> None:
    package = REPO_ROOT / "mechscope" / "sessions"
    assert not (package / "cli.py").exists()
    for module in package.glob("*.py"):
        imported = _imports(module)
        assert not any(name.startswith(("mechscope.cli", "mechscope.tui", "mechscope.screens",
                                         "textual", "rich")) for name in imported), module
        calls = [node.func.id for node in ast.walk(ast.parse(module.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        assert "print" not in calls and "input" not in calls, module


def test_a_mistyped_sub_command_names_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["sesions"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "mechscope: error: unknown command 'sesions'; did you mean 'sessions'?\n"


def test_the_cli_copies_of_the_engine_spellings_agree() -> None:
    """The CLI refuses bad dtypes and hub ids without importing torch, from copies of the engine's rules."""
    from mechscope.cli import common
    from mechscope.engine import loading, model_cache

    assert set(common.DTYPES) == {"auto", *loading._DTYPE_NAMES}
    assert common._HUB_ID.pattern == model_cache._HUB_ID.pattern
