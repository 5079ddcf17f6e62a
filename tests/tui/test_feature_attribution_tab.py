"""Feature attribution in the features tab: its key runs it on the current inputs, the ranked table shows
the engine's numbers, the outcome is recorded and a resumed session shows it again."""

from __future__ import annotations

import threading
import time

import numpy as np
from textual.widgets import Input

from mechscope.engine.errors import Cancelled
from mechscope.engine.features.formats import save_saelens
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.feature_attribution_view import FeatureAttributionView
from tests.features.saes import random_sae
from tests.tui.helpers import make_app, settle


def table_text(app) -> str:
    return app.screen.query_one(FeatureAttributionView).text


async def test_the_key_attributes_the_metric_to_features_records_it_and_a_resumed_session_shows_it(tmp_path):
    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))
    app = make_app(session_name="attributed")
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await pilot.press(key_of("feature_attribution"))
        await settle(pilot)
        assert "feature attribution needs an SAE" in app.bench.error
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = folder
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press(key_of("feature_attribution"))
        await settle(pilot)
        bench = app.bench
        expected = app.engine.feature_attribution(bench.inputs.clean, folder, None, bench.metric(),
                                                  bench.interventions(), 20, 10)
        text = table_text(app)
        assert "feature attribution · L1.resid_post" in text and "10 verified" in text
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


async def test_escape_stops_a_running_attribution_and_nothing_is_recorded(tmp_path):
    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))
    app = make_app(session_name="stopped")
    running = threading.Event()

    def until_stopped(*args):
        should_stop = args[8]  # the handler passes it positionally, after the corrupted prompt
        running.set()
        deadline = time.monotonic() + 5  # a screen that never stops it fails the test, not hangs it
        while not should_stop():
            if time.monotonic() > deadline:
                raise RuntimeError("never asked to stop")
            time.sleep(0.01)
        raise Cancelled("stopped")

    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = folder
        await pilot.press("enter")
        await settle(pilot)
        app.engine.feature_attribution = until_stopped
        await pilot.press(key_of("feature_attribution"))
        for _ in range(100):
            if running.is_set():
                break
            await pilot.pause(0.02)
        assert running.is_set() and "attributing the metric" in table_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert "feature attribution stopped" in table_text(app)
        assert not any(w.is_running for w in app.screen.workers)
        assert app.bench.feature_attribution.error is None
        kinds = [e["request"]["kind"] for e in app.bench.recorder.session.events if e.kind == "request"]
        assert "feature_attribution" not in kinds
