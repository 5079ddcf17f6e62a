"""Circuit work over the workbench's set without a terminal: the function-vector dialog's text, its
outcome recorded as a request and a vector that a steering intervention then uses, role tables
following the selected head (not recorded), role detectors as grids, and all of it dropped with the set."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine.interventions import SteeringVector
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.testing import tiny_engine
from mechscope.requests import execute
from mechscope.requests.kinds import FunctionVectorRequest, SetAttentionRequest
from mechscope.sessions import Session
from mechscope.workbench.set_circuits import FV_GRID
from tests.workbench.helpers import drive, recorded_bench, work

ICL = PromptSet("icl", (
    PromptRow("Mary: John\nstore: drink\nAlice:", "Mary: drink\nstore: John\nAlice:", " Bob", " Alice"),
    PromptRow("dog: moon\nBob: Alice\nstore:", "dog: Alice\nBob: moon\nstore:", " drink", " store"),
))
IOI_ROWS = PromptSet("two", (
    PromptRow("When Mary and John went to the store, John gave a drink to", "", " Mary", " John"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to", "", " Alice", " Bob"),
))


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


@pytest.mark.parametrize("text,error", [("", "type a layer"), ("x", "type a layer"), ("9", "out of range"),
                                         ("1 0", "at least 1"), ("1 2 3 4", "at most")])
def test_function_vector_text_refuses_in_one_line(engine, text, error):
    bench = recorded_bench(engine)
    bench.sets.use(ICL)
    assert bench.sets.circuits.function_vector_text(text, 3) is None
    assert error in bench.sets.error and "\n" not in bench.sets.error


def test_function_vector_is_recorded_and_steers(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.sets.use(ICL))
    request = bench.sets.circuits.function_vector_text("L1 3 2", 3)
    assert request == FunctionVectorRequest(ICL, 1, 3, 2.0, "fv-icl")
    drive(bench, engine, request)
    result = bench.sets.circuits.function_vector.result
    assert FV_GRID in bench.sets.grid_names()
    np.testing.assert_array_equal(bench.sets.grid_values(FV_GRID), result.aie)
    assert bench.sets.circuits.marks() == dict.fromkeys(result.heads, "f")
    [recorded] = work("function_vector")
    assert recorded["pset"]["name"] == "icl" and recorded["layer"] == 1
    assert recorded["outcome"]["heads"] == [list(h) for h in result.heads]
    np.testing.assert_array_equal(Session.open("study").vector("fv-icl"), result.vector)
    assert "fv-icl" in bench.vectors.norms
    run = bench.edits.add(SteeringVector(1, "fv-icl", 2.0, positions="last"))
    outcome = execute(engine, run)
    assert outcome.ok, outcome.error


def test_role_table_follows_the_head_unrecorded_and_role_detectors_fill_grids(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.sets.use(IOI_ROWS))
    circuits = bench.sets.circuits
    assert circuits.role_table(1, 2) is None
    request = circuits.attention_request(1, 2)
    assert request == SetAttentionRequest(IOI_ROWS, 1, 2)
    drive(bench, engine, request)
    assert circuits.attention_request(1, 2) is None  # shown already: not asked again
    table = circuits.role_table(1, 2)
    assert table is not None and "IO" in table and "END" in table and circuits.role_table(0, 0) is None
    assert work("set_attention") == []
    drive(bench, engine, circuits.role_heads_request())
    assert {"name_mover", "name_mover_logit", "s_inhibition"} <= set(bench.sets.grid_names())
    assert len(work("role_heads")) == 1
    drive(bench, engine, bench.sets.use(ICL))
    assert circuits.role_heads is None and circuits.roles is None and FV_GRID not in bench.sets.grid_names()
