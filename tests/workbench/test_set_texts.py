"""The prompt-set and estimate dialogs' texts, parsed by the rules the set commands apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechscope.requests.kinds import AUTO_VERIFY
from mechscope.screens.ask_value import error_of
from mechscope.workbench.set_texts import (
    EstimateText,
    FunctionVectorText,
    TemplateText,
    load_set_text,
    parse_estimate_text,
    parse_function_vector_text,
    parse_set_text,
)


def test_templates_and_paths_are_told_apart():
    assert parse_set_text("ioi") == TemplateText("ioi", (20,))
    assert parse_set_text(" ioi 30 7 ") == TemplateText("ioi", (30, 7))
    assert parse_set_text("antonyms 20 0 5") == TemplateText("antonyms", (20, 0, 5))
    assert parse_set_text("~/sets/ioi.jsonl") == Path("~/sets/ioi.jsonl").expanduser()
    assert parse_set_text("ioi 20 0 5") == Path("ioi 20 0 5")  # a fourth number only for in-context tasks


@pytest.mark.parametrize(("text", "problem"), [
    ("", "type a file path or a template"),
    ("ioi 100000", "a set needs 1 to 10000 rows, got 100000"),
    ("ioi 0", "a set needs 1 to 10000 rows, got 0"),
    ("ioi twenty", "'ioi twenty': a template takes a row count and a seed"),
    ("/no/such/set.jsonl", "prompt set not loaded: /no/such/set.jsonl: cannot read"),
])
def test_a_set_text_that_makes_no_set_says_why(text, problem):
    assert (error_of(load_set_text, text) or "").startswith(problem)


def test_a_file_is_read_to_check_it(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"clean": "a b", "corrupted": "a c", "target": " b", "foil": " c"}) + "\n")
    bad.write_text(json.dumps({"clean": "a b"}) + "\n{oops\n")
    assert error_of(load_set_text, str(good)) is None
    assert error_of(load_set_text, str(bad)) == f"prompt set not loaded: {bad}:2: invalid JSON (Expecting property name enclosed in double quotes)"


def test_estimate_texts():
    assert parse_estimate_text("") == EstimateText("atp")
    assert parse_estimate_text("EAP-IG steps 8 verify 10") == EstimateText("eap-ig", 8, 10)
    assert parse_estimate_text("atp* verify auto") == EstimateText("atp*", 5, AUTO_VERIFY)


@pytest.mark.parametrize(("text", "problem"), [
    ("lasso", "unknown estimator 'lasso' (known: atp, atp*, graddrop, eap-ig)"),
    ("eap-ig steps", "'eap-ig steps': a method then steps N / verify K"),
    ("eap-ig steps five", "steps must be a whole number, got 'five'"),
    ("eap-ig steps 0", "steps must be 1 to 64, got 0"),
    ("eap-ig steps 1000", "steps must be 1 to 64, got 1000"),
    ("atp verify 65", "verify must be auto or 0 to 64, got 65"),
])
def test_an_estimate_text_that_is_no_estimate_says_why(text, problem):
    assert (error_of(parse_estimate_text, text) or "").startswith(problem)


def test_function_vector_texts():
    assert parse_function_vector_text("12", 30) == FunctionVectorText(12)
    assert parse_function_vector_text("L12 5 2.5", 30) == FunctionVectorText(12, 5, 2.5)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "'': type a layer, then optionally top heads and a coefficient"),
    ("30", "layer 30 is out of range 0..29"),
    ("12 0", "top heads must be at least 1, got 0"),
    ("12 10 nan", "the coefficient must be a finite number, got 'nan'"),
    ("12 10 inf", "the coefficient must be a finite number, got 'inf'"),
    ("12 10 3 4", "'12 10 3 4': at most a layer, top heads and a coefficient"),
])
def test_a_function_vector_text_that_is_wrong_says_why(text, problem):
    assert (error_of(parse_function_vector_text, text, 30) or "").startswith(problem)
