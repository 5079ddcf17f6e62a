"""The features tab: an SAE folder chosen in a dialog, the clean prompt's strongest features shown,
recorded, read again when the prompt changes and brought back by a resumed session."""

from __future__ import annotations

from textual.widgets import Input

from mechscope.engine.features.formats import save_saelens
from mechscope.tui.widgets.features_view import FeaturesView
from tests.features.saes import random_sae
from tests.tui.helpers import make_app, settle


def view_text(app) -> str:
    rendered = app.screen.query_one("#features-summary").render()
    return getattr(rendered, "plain", str(rendered))


async def test_choosing_an_sae_folder_shows_the_last_tokens_strongest_features(tmp_path):
    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        assert "no SAE chosen: the palette's 'Features: SAE folder…'" in view_text(app)
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = folder
        await pilot.press("enter")
        await settle(pilot)
        expected = app.engine.feature_activations(app.bench.inputs.clean, folder, top_k=10)
        last = len(expected.tokens) - 1
        text = view_text(app)
        assert f"digest {expected.sae_digest[:12]}" in text and "L1.resid_post" in text
        top = [int(f) for f in expected.ids[last] if f >= 0][:3]
        for feature, value in zip(top, expected.values[last]):
            assert f"feature {feature:<7} {value:8.3f}" in text
        strip = app.screen.query_one(FeaturesView).query_one("#features-strip")
        assert strip.values.shape[1] == len(expected.tokens)
        recorded = [e for e in app.bench.recorder.session.events
                    if e.kind == "request" and e["request"]["kind"] == "feature_activations"]
        assert len(recorded) == 1 and recorded[0]["request"]["sae_folder"] == folder

        prompt = app.screen.query_one("#clean", Input)
        prompt.value = "The cat sat on the mat and"
        await pilot.pause(0.5)
        await settle(pilot)
        assert app.bench.features.result.tokens == app.engine.feature_activations(
            "The cat sat on the mat and", folder).tokens  # read again for the new prompt


async def test_a_bad_folder_is_one_line_in_the_tab_and_the_status(tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = str(tmp_path / "missing")
        await pilot.press("enter")
        await settle(pilot)
        assert "features not read:" in view_text(app) and "not a folder" in view_text(app)
