"""`mechscope inspect`: the first command a user runs, on a tiny model folder."""

from __future__ import annotations

import re

import pytest
import torch

from mechscope import cli
from mechscope.engine.testing import tiny_model, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_inspect_prints_top_tokens_and_heads(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    code = cli.main(["inspect", "--model", str(model_dir), PROMPT, "--target", " Mary", "--foil", " John",
                     "--top-k", "3", "--heads", "4"])
    out = capsys.readouterr().out
    assert code == 0
    model = tiny_model("llama")
    ids = torch.tensor([tiny_tokenizer()(PROMPT).input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    best = tiny_tokenizer().decode([int(logits.argmax())])
    assert f"1. {best!r}" in out
    mary, john = (tiny_tokenizer()(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    assert f"= {float(logits[mary] - logits[john]):.4f}" in out
    heads = re.findall(r"^  L(\d+)\.H(\d+)\s+([+-][\d.]+)$", out, re.M)
    assert len(heads) == 4
    sums = re.search(r"sum of all parts ([+-][\d.]+) = total ([+-][\d.]+)", out)
    assert sums and sums.group(1) == sums.group(2)


def test_inspect_errors_are_one_line(model_dir, capsys):
    assert cli.main(["inspect", "--model", str(model_dir), "   "]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert cli.main(["inspect", "--model", "/no/such/folder", PROMPT]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err


def test_progress_in_a_pipe_is_plain_lines(model_dir, capsys, monkeypatch):
    monkeypatch.delenv("MECHSCOPE_QUIET", raising=False)
    assert cli.main(["inspect", "--model", str(model_dir), PROMPT]) == 0
    err = capsys.readouterr().err
    assert err and "\r" not in err and "\033[" not in err  # no terminal redraws in a log file
    lines = err.splitlines()
    assert len(lines) == len(set(lines))  # each stage once, not once per percent
    assert cli.main(["inspect", "--model", "/no/such/folder", PROMPT]) == 2
    assert capsys.readouterr().err.startswith("error: ")
