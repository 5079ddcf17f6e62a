"""The nnsight backend refuses function vectors, set attention and role detectors by capability, in one line."""

from __future__ import annotations

import pytest

from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.requests import execute
from mechscope.requests.kinds import FunctionVectorRequest, RoleHeadsRequest, SetAttentionRequest

PSET = PromptSet("one", (PromptRow("When Mary and John went to the store, John gave a drink to",
                                   "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),))


@pytest.mark.parametrize("request_", [FunctionVectorRequest(PSET, 1), SetAttentionRequest(PSET, 1, 2),
                                      RoleHeadsRequest(PSET)], ids=lambda r: r.kind)
def test_nnsight_engine_refuses_the_set_circuit_kinds(request_):
    pytest.importorskip("nnsight")
    from mechscope.backends.nnsight_engine import NNsightEngine

    class Traced:
        capabilities = NNsightEngine.capabilities

    outcome = execute(Traced(), request_)
    assert outcome.error == "Traced cannot run prompt sets (capability 'prompt_sets')"
