"""Feature attribution in the features tab: its key runs it on the current inputs, the ranked table shows
the engine's numbers, the outcome is recorded and a resumed session shows it again."""

from __future__ import annotations

import numpy as np
from textual.widgets import Input

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
