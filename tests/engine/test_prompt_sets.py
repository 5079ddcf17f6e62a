"""Prompt sets: files, templates, serialisation and one-line errors."""

from __future__ import annotations

import json

import pytest

from mechscope.engine.prompt_sets import (
    PromptRow,
    PromptSet,
    PromptSetError,
    capitals_set,
    induction_set,
    ioi_set,
    load_prompt_set,
    single_token_words,
    template_set,
)
from mechscope.engine.testing import tiny_tokenizer


def test_jsonl_and_csv_read_the_same_rows(tmp_path):
    rows = [{"clean": "When Mary and John went", "corrupted": "When Mary and Mary went", "target": " Mary",
             "foil": " John"}, {"clean": "The capital of France is", "target": " Paris"}]
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    csv = tmp_path / "set.csv"
    csv.write_text('clean,corrupted,target,foil\n"When Mary and John went",When Mary and Mary went, Mary, John\n'
                   "The capital of France is,, Paris,\n")
    a, b = load_prompt_set(jsonl), load_prompt_set(csv)
    assert a.rows == b.rows
    assert a.rows[1] == PromptRow("The capital of France is", "", " Paris", "")
    assert a.name == "set" and a.source == str(jsonl)


@pytest.mark.parametrize(("text", "suffix", "message"), [
    ('{"clean": "a"}\n{"clean": 3}\n', ".jsonl", ":2: clean must be a string"),
    ('{"clean": "a"}\nnot json\n', ".jsonl", ":2: invalid JSON"),
    ('{"clean": "a", "other": 1}\n', ".jsonl", ":1: unknown field"),
    ('{"clean": "  "}\n', ".jsonl", ":1: clean prompt is empty"),
    ("prompt,target\nx,y\n", ".csv", ":1: CSV header"),
    ("clean,target\nx,y,z\n", ".csv", ":2: more cells than header columns"),
    ("", ".jsonl", "no rows"),
])
def test_bad_files_give_one_line_errors_with_file_and_line(tmp_path, text, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(PromptSetError) as info:
        load_prompt_set(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(PromptSetError, match="cannot read"):
        load_prompt_set(tmp_path / "nope.jsonl")


def test_sets_are_frozen_hashable_and_round_trip_through_json():
    pset = ioi_set(tiny_tokenizer(), n=6)
    again = PromptSet.from_dict(json.loads(json.dumps(pset.to_dict())))
    assert again == pset and hash(again) == hash(pset)
    with pytest.raises(AttributeError):
        pset.name = "x"  # type: ignore[misc]
    with pytest.raises(PromptSetError):
        PromptSet.from_dict({"name": "x", "rows": [{"clean": 1}]})
    with pytest.raises(PromptSetError):
        PromptSet("empty", ())


def test_ioi_rows_use_single_token_names_in_both_orders():
    tok = tiny_tokenizer()
    names = single_token_words(tok, ["Mary", "John", "Alice", "Bob", "Zebediah"])
    assert "Zebediah" not in names and len(names) >= 2
    pset = ioi_set(tok, n=8, seed=1)
    orders = set()
    for row in pset.rows:
        io, s = row.target.strip(), row.foil.strip()
        assert io in names and s in names and io != s
        first = row.clean.split(" and ")[0].split()[-1]
        orders.add("ABBA" if first == io else "BABA")
        assert len(tok(row.clean).input_ids) == len(tok(row.corrupted).input_ids)
        assert row.clean.count(s) == 2 and row.corrupted.count(io) == 2
    assert orders == {"ABBA", "BABA"}
    assert ioi_set(tok, n=8, seed=1) == pset  # seeded


def test_capitals_and_induction_templates():
    tok = tiny_tokenizer()
    caps = capitals_set(tok, n=5)
    for row in caps.rows:
        assert row.clean.startswith("The capital of ") and row.clean.endswith(" is")
        assert row.target != row.foil
    ind = induction_set(tok, n=3, length=4, seed=0)
    for row in ind.rows:
        words = row.clean.split()
        assert words[:3] == words[4:7] and row.target == " " + words[3]
        assert len(tok(row.clean).input_ids) == len(tok(row.corrupted).input_ids) == 7
    assert template_set("capitals", tok, n=3).rows == capitals_set(tok, n=3).rows
    with pytest.raises(PromptSetError, match="unknown template"):
        template_set("nope", tok)
