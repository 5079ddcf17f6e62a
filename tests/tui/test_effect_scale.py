"""The normalised patching effect: (patched - base) / (source - base) beside the raw Δ, in runs under a
patch, sweeps, set sweeps, the screen, the session and the exports."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from mechscope.engine.interventions import ActivationPatch, HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.results import SetSweepResult, SweepResult, normalised_effect
from mechscope.engine.testing import FAMILIES, tiny_engine
from mechscope.sessions.state import StateBuilder
from mechscope.tui.app import IOI_PAIR
from mechscope.tui.widgets.predictions import PredictionsPane, predictions_text
from mechscope.workbench.exports import sweep_to_csv
from tests.tui.helpers import make_app, screen_text, settle

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


def test_normalised_effect_is_the_share_of_the_gap_and_nan_without_one():
    shares = normalised_effect(np.array([[2.0, -1.0], [0.0, 4.0]]), 1.0, 5.0)
    np.testing.assert_allclose(shares, [[0.5, -0.25], [0.0, 1.0]])
    assert np.isnan(normalised_effect(np.array([1.0]), 2.0, 2.0)).all()
    set_result = SetSweepResult("s", "noising", per_row=np.array([[[1.0]], [[3.0]]]),
                                base_metric=np.array([0.0, 2.0]), source_metric=np.array([4.0, 6.0]))
    assert set_result.normalised[0, 0] == pytest.approx(2.0 / 4.0)  # mean effect over the mean gap


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_under_a_patch_knows_its_source_metric_and_a_full_patch_recovers_the_gap(family):
    engine = tiny_engine(family)
    last = engine.info.n_layers - 1
    source = engine.run(CORRUPT, metric=METRIC)
    everything = ActivationPatch(f"L{last}.resid_post", CORRUPT)  # the whole last residual: the source run
    patched = engine.run(CLEAN, [everything], metric=METRIC, corrupted=CORRUPT)
    assert patched.source_metric == pytest.approx(source.metric, abs=1e-6)
    assert patched.metric == pytest.approx(source.metric, abs=1e-5)
    share = normalised_effect(patched.metric - patched.baseline.metric, patched.baseline.metric,
                              patched.source_metric)
    assert float(share) == pytest.approx(1.0, abs=1e-5)
    text = predictions_text(patched, intervened=True).plain
    assert f"patch source {source.metric:+.3f}" in text and "normalised +1.00 of the gap" in text
    ablated = engine.run(CLEAN, [HeadAblation(0, 0)], metric=METRIC, corrupted=CORRUPT)
    assert ablated.source_metric is None  # nothing is copied from another run: no gap to speak of
    assert "of the gap" not in predictions_text(ablated, intervened=True).plain


def test_a_sweep_cell_normalised_equals_the_single_patch_run_normalised(engine):
    sweep = engine.sweep("head", CLEAN, CORRUPT, METRIC)
    layer, head = np.unravel_index(int(np.argmax(np.abs(sweep.values))), sweep.values.shape)
    run = engine.run(CLEAN, [ActivationPatch(f"L{layer}.H{head}", CORRUPT)], metric=METRIC, corrupted=CORRUPT)
    by_hand = (run.metric - run.baseline.metric) / (run.source_metric - run.baseline.metric)
    assert sweep.normalised[layer, head] == pytest.approx(by_hand, abs=1e-4)


def test_sweep_csv_holds_the_effect_asked_for():
    result = SweepResult("head", np.array([[2.0, -1.0]]), 1.0, 5.0, ["L0"], ["0", "1"], True, 0.0)
    both = list(csv.DictReader(io.StringIO(sweep_to_csv(result))))
    assert [float(r["delta_metric"]) for r in both] == [2.0, -1.0]
    assert [float(r["normalised_effect"]) for r in both] == [0.5, -0.25]
    only = list(csv.DictReader(io.StringIO(sweep_to_csv(result, effect="normalised"))))
    assert "delta_metric" not in only[0] and float(only[1]["normalised_effect"]) == -0.25
    with pytest.raises(ValueError, match="effect must be one of"):
        sweep_to_csv(result, effect="percent")


async def test_percent_shows_sweeps_normalised_records_it_and_a_resumed_session_keeps_it():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        result = app.bench.sweeps.states["head"].result
        assert app.screen.grid.metric_title == "noising"
        await pilot.press("percent_sign")
        await settle(pilot)
        assert app.bench.sweeps.effect_scale == "normalised"
        np.testing.assert_allclose(app.screen.grid.values, result.normalised, equal_nan=True)
        assert app.screen.grid.metric_title == "noising ÷gap"
        text = screen_text(app)
        assert "normalised effect (patched - base) / (source - base)" in text
        assert "of the gap  (Δ" in text  # the sweep view leads with the share, the Δ beside it
        assert "cells: share of the gap (%: Δ)" in text  # the key as typed, not its Textual name
        events = [e for e in app.bench.recorder.session.events if e.kind == "effect_scale"]
        assert [e["scale"] for e in events] == ["normalised"]
        builder = StateBuilder()
        for event in app.bench.recorder.session.events:
            builder.apply(event)
        assert builder.state({}).effect_scale == "normalised"
        await pilot.press("percent_sign")
        await settle(pilot)
        np.testing.assert_allclose(app.screen.grid.values, result.values, equal_nan=True)
        assert app.screen.grid.metric_title == "noising"


async def test_the_predictions_pane_under_a_patch_says_which_run_is_which():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("p")  # patch the selected head from the corrupted prompt
        await settle(pilot)
        result = app.bench.result
        source = app.engine.run(IOI_PAIR.corrupted, metric=app.bench.run.request.metric)
        assert result.source_metric == pytest.approx(source.metric, abs=1e-6)
        rendered = app.query_one(PredictionsPane).render()
        text = getattr(rendered, "plain", str(rendered))
        share = (result.metric - result.baseline.metric) / (source.metric - result.baseline.metric)
        assert f"patch source {source.metric:+.3f}" in text
        assert f"normalised {share:+.2f} of the gap" in text


def test_every_key_hint_names_the_key_as_typed():
    from mechscope.tui.commands import COMMANDS, key_label

    assert [key_label(c.keys) for c in COMMANDS if "_" in key_label(c.keys)] == []
