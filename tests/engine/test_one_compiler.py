"""One intervention compiler: every registered kind gives a prompt set's rows what single-prompt runs
give them, and a kind defined here (dataclass + compile function, nothing else) reaches the `+`
chooser, single-prompt runs, prompt sets and the nnsight backend."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from mechscope.engine.edits import COMPILERS, Context, Edits, compiles
from mechscope.engine.errors import InterventionError
from mechscope.engine.interventions import (
    INTERVENTION_TYPES,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    NeuronClamp,
    Place,
    Positions,
    SteeringVector,
    chooser_types,
)
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.set_runs import run_set
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_model, tiny_tokenizer

ROWS = PromptSet("mixed", (
    PromptRow("When Mary and John went to the store, John gave a drink to",
              "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    PromptRow("The capital of France is", "The capital of Eiffel is", " Paris", " the"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
              "Alice and Bob walked to the park, and Alice handed a book to", " Alice", " Bob"),
    PromptRow("One two three", "One two four", " four", " five"),
))
# The kinds a prompt set must take (the others may be refused in one line naming the kind).
OVER_A_SET = {HeadAblation, HeadScale, ComponentAblation, NeuronClamp, SteeringVector}


def variants(cls: type[Intervention], place: Place) -> list[Intervention]:
    """The chooser's example of `cls`, then one per ablation mode and with explicit positions
    (first and last, a negative one counting from each row's end), where its fields allow."""
    example = cls.example(place)
    names = {f.name for f in dataclasses.fields(example)}
    out = [example]
    if "mode" in names:
        out += [dataclasses.replace(example, mode=mode) for mode in ("mean", "resample")]  # type: ignore[call-arg]
    if "positions" in names:
        out.append(dataclasses.replace(example, positions=(0, -1)))  # type: ignore[call-arg]
    if cls is SteeringVector:
        out.append(dataclasses.replace(example, positions="last"))  # type: ignore[call-arg]
    return out


def _engine(family: str):
    engine = tiny_engine(family)
    engine.add_vector("v", np.random.default_rng(1).normal(size=engine.adapter.d_model).astype(np.float32))
    # single-prompt mean ablation averages over the reference prompts; over a set, over its clean rows
    engine.set_reference_prompts([row.clean for row in ROWS.rows])
    return engine


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kind_a_set_takes_equals_single_prompt_runs_of_its_rows(family):
    engine = _engine(family)
    place = Place(layer=1, head=2, last=2, clean=ROWS.rows[0].clean, corrupted=ROWS.rows[0].corrupted,
                  vectors=("v",))
    taken = set()
    for cls in INTERVENTION_TYPES:
        for iv in variants(cls, place):
            try:
                result = run_set(engine, ROWS, interventions=[iv], vectors=engine.vectors)
            except InterventionError as exc:
                assert str(exc) == f"{iv.label}: {iv.kind} is not supported over a prompt set"
                continue
            taken.add(cls)
            for r, row in enumerate(ROWS.rows):
                single = engine.run(row.clean, [iv], metric=Metric("logit_diff", row.target, row.foil),
                                    corrupted=row.corrupted)
                assert result.baseline[r] == pytest.approx(single.baseline.metric, abs=1e-5), (iv.label, r)
                assert result.values[r] == pytest.approx(single.prediction.metric, abs=1e-5), (iv.label, r)
            assert result.values.tolist() != result.baseline.tolist(), iv.label  # it changed something
    assert taken >= OVER_A_SET


# ---------------------------------------------------------------- a kind added in three places


@pytest.fixture
def negation():
    """A kind defined here and nowhere else: its dataclass and its compile function, registered for
    the test and removed after it."""

    @dataclass(frozen=True)
    class HeadNegation(Intervention):
        """Negate a head's output."""

        kind: ClassVar[str] = "test_head_negation"
        title: ClassVar[str] = "head negation"
        description: ClassVar[str] = "flip the sign of one head's output"
        layer: int
        head: int
        positions: Positions = None
        enabled: bool = True

        @classmethod
        def example(cls, place: Place) -> HeadNegation:
            return cls(place.layer, place.head)

        @property
        def label(self) -> str:
            return f"negate L{self.layer}.H{self.head}"

    @compiles(HeadNegation)
    def _compile(iv: HeadNegation, ctx: Context, edits: Edits) -> None:
        ctx.check_layer(iv.layer, iv.head)
        positions = ctx.positions(iv.positions)
        if not ctx.dry_run:
            edits.edit("heads", iv.layer, "scale", positions, -1.0, iv.head)

    try:
        yield HeadNegation
    finally:
        del Intervention.registry[HeadNegation.kind]
        del COMPILERS[HeadNegation]


def _negated_by_hand(engine, prompt: str, layer: int, head: int, row: PromptRow) -> float:
    """The logit difference with the head's slice of the output projection's input negated, by a
    plain torch hook on the model."""
    a = engine.adapter
    d_head = a.d_head

    def negate(module, args):
        x = args[0].clone()
        x[..., head * d_head:(head + 1) * d_head] *= -1
        return (x, *args[1:])

    ids = torch.tensor([engine.tokenize(prompt)[0]])
    handle = a.o_proj(layer).register_forward_pre_hook(negate)
    try:
        with torch.no_grad():
            logits = engine.model(input_ids=ids).logits[0, -1].float()
    finally:
        handle.remove()
    target, foil = (tiny_tokenizer()(text, add_special_tokens=False).input_ids[0] for text in (row.target, row.foil))
    return float(logits[target] - logits[foil])


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_a_kind_defined_in_a_test_reaches_every_path(negation, family):
    from mechscope.backends.nnsight_engine import NNsightEngine

    assert negation in chooser_types()
    engine = _engine(family)
    iv = negation.example(Place(layer=1, head=2))
    assert iv == negation(1, 2)
    expected = [_negated_by_hand(engine, row.clean, 1, 2, row) for row in ROWS.rows]
    singles = [engine.run(row.clean, [iv], metric=Metric("logit_diff", row.target, row.foil)).prediction.metric
               for row in ROWS.rows]
    np.testing.assert_allclose(singles, expected, atol=1e-4)
    over_set = run_set(engine, ROWS, interventions=[iv])
    np.testing.assert_allclose(over_set.values, expected, atol=1e-4)
    backend = NNsightEngine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}")
    traced = [backend.run(row.clean, [iv], metric=Metric("logit_diff", row.target, row.foil)).prediction.metric
              for row in ROWS.rows]
    np.testing.assert_allclose(traced, expected, atol=1e-4)
    assert Intervention.from_dict(iv.to_dict()) == iv


async def test_the_plus_chooser_offers_a_kind_defined_in_a_test(negation):
    from textual.widgets import Input

    from mechscope.screens.choose import ChooseScreen
    from mechscope.screens.edit_intervention import EditInterventionScreen
    from tests.tui.helpers import make_app, settle

    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("plus")
        await pilot.pause()
        assert isinstance(app.screen, ChooseScreen)
        assert [item[0] for item in app.screen.items][-1] == negation.kind
        await pilot.press("end", "enter")
        await pilot.pause()
        assert isinstance(app.screen, EditInterventionScreen)
        assert app.screen.title_text == "add head negation"
        app.screen.query_one("#field-layer", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [negation(0, 0)]
