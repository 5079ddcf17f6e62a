"""Feature attribution in the features tab: its key runs it on the current inputs, the ranked table shows
the engine's numbers, the outcome is recorded and a resumed session shows it again."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from textual.widgets import Input

from mechscope.engine.errors import Cancelled
from mechscope.engine.features.formats import save_saelens
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.feature_attribution_view import FeatureAttributionView
from tests.features.saes import random_sae
from tests.tui.helpers import make_app, settle


@pytest.fixture
def folder(tmp_path) -> str:
    """A random SAE on L1.resid_post of the tiny model, saved in SAELens' layout."""
    return str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))


async def choose_sae(app, pilot, folder: str) -> None:
    app.screen.action_command("sae_folder")
    await settle(pilot)
    app.screen.query_one("#ask-input", Input).value = folder
    await pilot.press("enter")
    await settle(pilot)


async def command(pilot, name: str) -> None:
    """Press the key bound to a key-table command and wait for what it starts."""
    await pilot.press(key_of(name))
    await settle(pilot)


def table_text(app) -> str:
    return app.screen.query_one(FeatureAttributionView).text


async def test_the_key_attributes_the_metric_to_features_records_it_and_a_resumed_session_shows_it(folder):
    app = make_app(session_name="attributed")
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await command(pilot, "feature_attribution")
        assert "feature attribution needs an SAE" in app.bench.error
        await choose_sae(app, pilot, folder)
        await command(pilot, "feature_attribution")
        bench = app.bench
        expected = app.engine.feature_attribution(bench.inputs.clean, folder, None, bench.metric(),
                                                  bench.interventions(), 20, 10)
        text = table_text(app)
        assert "feature attribution · L1.resid_post · logit diff ' Mary' − ' John'" in text and "10 verified" in text
        assert f"base metric {expected.base_metric:+.4f}" in text
        lines = text.splitlines()
        first = lines[next(n for n, line in enumerate(lines) if line.lstrip().startswith("#")) + 1]
        assert first.split()[:2] == ["1", str(int(expected.features[0]))]
        assert f"{expected.estimates[0]:+9.4f}".strip() in first and f"{expected.exact[0]:+9.4f}".strip() in first
        assert f"{float(np.sum(expected.error_estimates)):+9.4f}".strip() in text  # the error node's row
        assert "correlation" in text
        kinds = [e["request"]["kind"] for e in bench.recorder.session.events if e.kind == "request"]
        assert kinds.count("feature_attribution") == 1
        await pilot.press("space")  # an ablation on the grid: the table says it no longer matches
        await settle(pilot)
        assert "stale: interventions changed since" in table_text(app)

    resumed = make_app(session_name="attributed")
    async with resumed.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        restored = resumed.bench.feature_attribution.result
        assert restored is not None and np.array_equal(restored.features, expected.features)
        await pilot.press("7")
        await settle(pilot)
        assert f"base metric {expected.base_metric:+.4f}" in table_text(resumed)


def until_stopped(running: threading.Event):
    """An engine method that runs until the job is asked to stop (then raises `Cancelled`)."""
    def attribution(*args):
        should_stop = args[8]  # the handler passes it positionally, after the corrupted prompt
        running.set()
        deadline = time.monotonic() + 5  # a screen that never stops it fails the test, not hangs it
        while not should_stop():
            if time.monotonic() > deadline:
                raise RuntimeError("never asked to stop")
            time.sleep(0.01)
        raise Cancelled("stopped")
    return attribution


async def start_then_escape(app, pilot) -> None:
    running = threading.Event()
    app.engine.feature_attribution = until_stopped(running)
    await pilot.press(key_of("feature_attribution"))
    for _ in range(100):
        if running.is_set():
            break
        await pilot.pause(0.02)
    assert running.is_set() and "attributing the metric" in table_text(app)
    await pilot.press("escape")
    await settle(pilot)
    assert not any(w.is_running for w in app.screen.workers)


async def test_escape_stops_a_running_attribution_and_nothing_is_recorded(folder):
    app = make_app(session_name="stopped")
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await choose_sae(app, pilot, folder)
        await start_then_escape(app, pilot)
        assert "feature attribution stopped" in table_text(app)
        assert app.bench.feature_attribution.error is None
        kinds = [e["request"]["kind"] for e in app.bench.recorder.session.events if e.kind == "request"]
        assert "feature_attribution" not in kinds


async def test_a_stopped_attribution_leaves_the_earlier_table_shown(folder):
    app = make_app()
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await choose_sae(app, pilot, folder)
        await command(pilot, "feature_attribution")
        earlier = app.bench.feature_attribution.result
        await start_then_escape(app, pilot)
        assert app.bench.feature_attribution.result is earlier
        assert f"base metric {earlier.base_metric:+.4f}" in table_text(app)
        assert "feature attribution stopped: the table is the earlier one" in app.bench.info


async def test_a_picked_row_is_selected_in_the_tab_and_the_feature_keys_edit_it_there(folder):
    from mechscope.engine.interventions import FeatureAblation
    from mechscope.tui.widgets.features_view import FeaturesView

    app = make_app()
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await choose_sae(app, pilot, folder)
        await command(pilot, "feature_pick")
        assert "no feature attribution shown" in app.bench.error  # nothing to pick from yet
        await command(pilot, "feature_attribution")
        result = app.bench.feature_attribution.result
        features = app.bench.features
        strongest = features.result
        # a row whose feature is not among the strongest the tab lists at its token
        rank = next(n for n in range(len(result.features))
                    if int(result.features[n]) not in strongest.ids[int(result.positions[n])].tolist())
        pos, feature = int(result.positions[rank]), int(result.features[rank])

        await command(pilot, "feature_pick")
        field = app.screen.query_one("#ask-input", Input)
        for typed, problem in (("two", "a row number, 1..20; got 'two'"), ("21", "a row number, 1..20; got 21")):
            field.value = typed
            await pilot.press("enter")
            await settle(pilot)
            assert problem in str(app.screen.query_one("#ask-error").render())  # the dialog stays open
        field.value = str(rank + 1)
        await pilot.press("enter")
        await settle(pilot)
        assert (features.token(), features.selected()) == (pos, feature)
        assert features.activation() == float(result.activations[rank])
        listing = str(app.screen.query_one(FeaturesView).query_one("#features-summary").render())
        assert f"▸ feature {feature:<7}" in listing
        table = table_text(app).splitlines()
        assert [line for line in table if line.startswith("▸")] == [
            next(line for line in table if line[1:].split()[:2] == [str(rank + 1), str(feature)])]
        await pilot.press(key_of("feature_edit('ablate')"))
        await settle(pilot)
        assert FeatureAblation("L1.resid_post", folder, feature, positions=(pos,)) in app.bench.interventions()
