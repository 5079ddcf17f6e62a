"""Mean ablation over the set's corrupted prompts (the IOI paper's ABC distribution): single runs
and set runs average over them, the labels say so, and the choice is recorded as reference prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine.interventions import HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.testing import FAMILIES, tiny_engine
from mechscope.requests.kinds import ReferencePromptsRequest, RunSetRequest
from mechscope.requests.registry import execute
from tests.workbench.helpers import recorded_bench

ROWS = PromptSet("abc", (
    PromptRow("When Mary and John went to the store, John gave a drink to",
              "When Alice and Bob went to the store, Carl gave a drink to", " Mary", " John"),
    PromptRow("When Tom and Anna went to the park, Anna gave a ball to",
              "When Lisa and Paul went to the park, Kate gave a ball to", " Tom", " Anna"),
))
LAYER, HEAD = 1, 2


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


def head_outputs(engine, prompt: str) -> torch.Tensor:
    """[pos, d_head] of LAYER.HEAD at the output projection's input, by a plain forward hook."""
    seen = {}
    o_proj = engine.adapter.o_proj(LAYER)
    handle = o_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("z", args[0].detach()))
    try:
        with torch.no_grad():
            engine.model(engine.passes.prompt_ids(prompt)[0])
    finally:
        handle.remove()
    d_head = engine.adapter.d_head
    return seen["z"][0, :, HEAD * d_head:(HEAD + 1) * d_head]  # [pos, d_head]


def metric_with_head_set_to(engine, prompt: str, value: torch.Tensor, metric: Metric) -> float:
    d_head = engine.adapter.d_head

    def replace(module, args):
        z = args[0].clone()
        z[0, :, HEAD * d_head:(HEAD + 1) * d_head] = value
        return (z, *args[1:])

    handle = engine.adapter.o_proj(LAYER).register_forward_pre_hook(replace)
    try:
        with torch.no_grad():
            logits = engine.model(engine.passes.prompt_ids(prompt)[0]).logits[0, -1].float()
    finally:
        handle.remove()
    tok = engine.tokenizer
    return float(logits[tok.encode(metric.target)[0]] - logits[tok.encode(metric.foil)[0]])


@pytest.mark.parametrize("family", FAMILIES)
def test_abc_mean_ablation_equals_the_hand_mean_over_the_corrupted_prompts(family):
    engine = tiny_engine(family)
    abc = [head_outputs(engine, row.corrupted) for row in ROWS.rows]
    mean = torch.cat(abc).mean(0)  # [d_head]: every token of every corrupted prompt
    assert execute(engine, ReferencePromptsRequest(tuple(ROWS.column("corrupted")))).ok
    row = ROWS.rows[0]
    metric = Metric("logit_diff", row.target, row.foil)
    single = engine.run(row.clean, [HeadAblation(LAYER, HEAD, "mean")], metric=metric)
    assert single.metric == pytest.approx(metric_with_head_set_to(engine, row.clean, mean, metric), abs=1e-4)
    over_set = execute(engine, RunSetRequest(ROWS, interventions=(HeadAblation(LAYER, HEAD, "mean"),),
                                             means="corrupted"))
    assert over_set.ok, over_set.error
    assert over_set.result.values[0] == pytest.approx(single.metric, abs=1e-4)  # the set agrees with the row
    clean_means = execute(engine, RunSetRequest(ROWS, interventions=(HeadAblation(LAYER, HEAD, "mean"),)))
    assert not np.allclose(clean_means.result.values, over_set.result.values)  # a different distribution


def test_the_workbench_sets_abc_means_and_every_label_says_so(engine):
    bench = recorded_bench(engine)
    bench.sets.use(ROWS)
    assert bench.sets.mean_rows() == "clean"
    request = bench.sets.abc_means_request()
    assert request == ReferencePromptsRequest(tuple(ROWS.column("corrupted")))
    bench.accept(execute(engine, request))
    assert bench.sets.mean_rows() == "corrupted"
    assert "ABC: the 2 corrupted prompts of set 'abc'" in bench.info
    bench.select(LAYER, HEAD)
    bench.edits.ablate("mean")
    entry = bench.edits.stack.entries[-1]
    assert bench.edits.label(entry).endswith("(ABC)")
    assert bench.sets.run_request().means == "corrupted"
    recorded = [e for e in bench.recorder.session.events if e.kind == "reference_prompts"]
    assert recorded[-1]["prompts"] == list(ROWS.column("corrupted"))


def test_abc_means_need_a_corrupted_prompt_in_every_row(engine):
    bench = recorded_bench(engine)
    bench.sets.use(PromptSet("half", (PromptRow("a b c", "", " a", " b"),)))
    assert bench.sets.abc_means_request() is None
    assert "without a corrupted prompt" in bench.sets.error
