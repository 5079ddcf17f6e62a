"""The features tab: an SAE folder chosen in a dialog, the clean prompt's strongest features shown,
recorded, read again when the prompt changes and brought back by a resumed session."""

from __future__ import annotations

import dataclasses

import pytest
from textual.widgets import Input

from mechscope.engine.features.formats import save_saelens
from mechscope.engine.testing import tiny_engine
from mechscope.tui.widgets.features_view import FeaturesView
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.prompt_pane import show_token
from tests.features.saes import random_sae
from tests.tui.helpers import drawn_lines, make_app, settle


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
        view = app.screen.query_one(FeaturesView)
        summary, card = view.query_one("#features-summary"), view.query_one("#features-card")
        strip = view.query_one("#features-strip")
        assert not card.display and not strip.display  # the hint has the tab to itself
        assert summary.size.width == view.size.width
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = folder
        await pilot.press("enter")
        await settle(pilot)
        expected = app.engine.feature_activations(app.bench.inputs.clean, folder, top_k=10)
        last = len(expected.tokens) - 1
        text = view_text(app)
        assert f"digest {expected.sae_digest[:12]}" in text and "L1.resid_post" in text
        assert card.display and strip.display and summary.size.width < view.size.width
        top = [int(f) for f in expected.ids[last] if f >= 0][:3]
        for feature, value in zip(top, expected.values[last]):
            assert f"feature {feature:<7} {value:8.3f}" in text
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


def card_text(app) -> str:
    rendered = app.screen.query_one("#features-card").render()
    return getattr(rendered, "plain", str(rendered))


async def open_folder(app, pilot, folder: str) -> None:
    await settle(pilot)
    await pilot.press("7")
    app.screen.action_command("sae_folder")
    await settle(pilot)
    app.screen.query_one("#ask-input", Input).value = folder
    await pilot.press("enter")
    await settle(pilot)


async def test_feature_edits_from_the_tab_run_recorded_and_replay(tmp_path):
    from mechscope.engine.interventions import FeatureAblation, FeatureClamp, FeatureSteer
    from mechscope.engine.testing import tiny_engine
    from mechscope.sessions import Session
    from mechscope.sessions.replaying import replay

    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_folder(app, pilot, folder)
        expected = app.engine.feature_activations(app.bench.inputs.clean, folder, top_k=10)
        pos = len(expected.tokens) - 2
        await pilot.press("less_than_sign", "full_stop")  # the token before the last, its 2nd strongest feature
        await settle(pilot)
        feature = int(expected.ids[pos][1])
        assert app.bench.features.selected() == feature and app.bench.features.token() == pos
        assert "▸ feature " + f"{feature:<7} {expected.values[pos][1]:8.3f}" in view_text(app)
        assert f"activation at token {pos}" in view_text(app)
        await pilot.press("z")
        await settle(pilot)
        ablation = FeatureAblation("L1.resid_post", folder, feature, positions=(pos,))
        assert app.bench.interventions() == (ablation,)
        metric = app.bench.run.request.metric
        by_hand = app.engine.run(app.bench.inputs.clean, [ablation], metric=metric)
        assert app.bench.result.metric == pytest.approx(by_hand.metric, abs=1e-6)
        assert app.bench.result.metric != pytest.approx(app.engine.run(app.bench.inputs.clean, metric=metric).metric,
                                                        abs=1e-6)
        options = app.screen.query_one(InterventionList)
        assert f"ablate L1.resid_post sae#{feature} @{pos}" in str(options.get_option_at_index(0).prompt)

        await pilot.press("equals_sign")  # clamp: a value the rules refuse keeps the dialog, error beside it
        await settle(pilot)
        field = app.screen.query_one("#ask-input", Input)
        field.value = "nan"
        await pilot.press("enter")
        await settle(pilot)
        assert "value: must be a finite number" in str(app.screen.query_one("#ask-error").render())
        field.value = "2.5"
        await pilot.press("enter")
        await settle(pilot)
        clamp = FeatureClamp("L1.resid_post", folder, feature, 2.5, positions=(pos,))
        await pilot.press("d")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = "-1.5"
        await pilot.press("enter")
        await settle(pilot)
        steer = FeatureSteer("L1.resid_post", folder, feature, -1.5, positions=(pos,))
        assert app.bench.interventions() == (ablation, clamp, steer)
        by_hand = app.engine.run(app.bench.inputs.clean, [ablation, clamp, steer], metric=metric)
        assert app.bench.result.metric == pytest.approx(by_hand.metric, abs=1e-6)

        await pilot.press("z")  # again: the ablation goes, as space takes a head's away
        await settle(pilot)
        assert app.bench.interventions() == (clamp, steer)
        name = app.bench.recorder.name
        added = [e["intervention"] for e in app.bench.recorder.session.events
                 if e.kind == "intervention" and e["action"] == "added"]
        assert [(a["kind"], a["sae_id"], a["feature"], a["positions"]) for a in added] == [
            (kind, folder, feature, [pos]) for kind in ("feature_ablation", "feature_clamp", "feature_steer")]
    steps = replay(Session.open(name), tiny_engine("llama"))  # a fresh engine: nothing attached
    runs = [s for s in steps if s.kind == "run"]
    assert runs and all(step.matches for step in steps)


async def test_the_card_reads_the_index_and_feature_names_are_recorded_and_resumed(tmp_path):
    from mechscope.engine.features.cards import Context, FeatureIndex, save_index
    from mechscope.sessions import Session

    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "sae"))
    bare = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=5), tmp_path / "bare"))
    top = [[Context(3.0 - i, ["When", " Mary", " and", " John"], 1 + i) for i in range(2)] for _ in range(64)]
    save_index(FeatureIndex(tokens=1000, density=[(f + 1) / 800 for f in range(64)], top=top), folder)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_folder(app, pilot, folder)
        feature = app.bench.features.selected()
        card = app.engine.feature_card(folder, feature, "L1.resid_post", k=4)
        text = card_text(app)
        assert f"feature {feature} · L1.resid_post\n" in text
        assert f"density: fires on {100 * (feature + 1) / 800:.3g}% of 1,000 indexed tokens" in text
        assert "When[·Mary]·and·John" in text.replace(" ", "·") or "When[ Mary] and John" in text
        assert "3.000" in text and "2.000" in text
        promoted = "  ".join(f"{show_token(t)} {v:+.2f}" for t, v in zip(card.promoted, card.promoted_logits.tolist()))
        assert promoted in text
        cards = [e for e in app.bench.recorder.session.events
                 if e.kind == "request" and e["request"]["kind"] == "feature_card"]
        assert [(c["request"]["sae_folder"], c["request"]["feature"]) for c in cards] == [(folder, feature)]

        await pilot.press("full_stop")  # the selection moves: the next feature's card is read
        await settle(pilot)
        second = app.bench.features.selected()
        assert second != feature and f"feature {second} · " in card_text(app)
        await pilot.press("comma")
        await settle(pilot)
        assert app.bench.features.selected() == feature

        await pilot.press("t")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = "L1 res: Mary/John names"
        await pilot.press("enter")
        await settle(pilot)
        assert f"feature {feature:<7}" in view_text(app) and "L1 res: Mary/John names" in view_text(app)
        assert f"feature {feature} 'L1 res: Mary/John names'" in card_text(app)
        name = app.bench.recorder.name
        labels = [(e["sae_folder"], e["feature"], e["label"]) for e in app.bench.recorder.session.events
                  if e.kind == "feature_label"]
        assert labels == [(folder, feature, "L1 res: Mary/John names")]

        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = bare
        await pilot.press("enter")
        await settle(pilot)
        assert f"no index: run `mechscope features index {bare}`" in card_text(app)
        app.screen.action_command("sae_folder")
        await settle(pilot)
        app.screen.query_one("#ask-input", Input).value = folder
        await pilot.press("enter")
        await settle(pilot)
    assert Session.open(name).state().feature_labels == {folder: {feature: "L1 res: Mary/John names"}}

    resumed = make_app(session_name=name)
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert resumed.bench.features.labels == {folder: {feature: "L1 res: Mary/John names"}}
        await pilot.press("7")
        await settle(pilot)
        assert "L1 res: Mary/John names" in view_text(resumed)
        assert f"feature {feature} 'L1 res: Mary/John names'" in card_text(resumed)


async def test_an_sae_trained_here_is_offered_when_none_is_chosen(tmp_path):
    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / "trained"))
    engine = tiny_engine("llama")
    engine.info = dataclasses.replace(engine.info, trained_saes=(folder, str(tmp_path / "older")))
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        assert app.bench.features.folder == folder
        expected = engine.feature_activations(app.bench.inputs.clean, folder, top_k=10)
        assert f"{folder} · digest {expected.sae_digest[:12]}" in view_text(app)
        app.screen.action_command("sae_folder")
        await settle(pilot)
        assert app.screen.query_one("#ask-input", Input).value == folder  # the dialog starts from it


async def test_at_120x40_the_selected_feature_and_several_strip_rows_are_on_screen(tmp_path):
    from mechscope.tui.widgets.heatmap import Heatmap

    long_name = "b179c9523d0e-L1.resid_post-w64-k32-006718e4-600000-s0"  # as `features train` names folders
    folder = str(save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=4), tmp_path / long_name))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_folder(app, pilot, folder)
        summary = app.screen.query_one("#features-summary")
        lines = summary.render_lines(summary.region.reset_offset)  # wrapped and cut as on screen
        shown = ["".join(s.text for s in line).rstrip() for line in lines]
        selected = app.bench.features.selected()
        assert any(line.startswith(f"▸ feature {selected} ") for line in shown), shown
        assert shown[0].startswith("SAE b179c9523d0e-…") and len(shown[0]) < 60  # the name elided
        assert app.screen.query_one("#features-strip", Heatmap).region.height >= 5


async def test_at_80x24_the_whole_no_sae_hint_is_on_screen():
    """The hint shared the tab with an empty card and strip: at 80x24 it was cut after 'reads one'."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = drawn_lines(app)
    assert "`mechscope features train` makes one" in " ".join(line.split("│")[-1].strip() for line in screen)
