"""Prompt sets in the workbench without a terminal: rows become the inputs, set numbers and set
sweeps match the engine, an estimate's verified heads hold the exact patching values, requests
travel as dicts, and a recorded set run and set sweep replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mechscope.engine.interventions import HeadAblation
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.testing import tiny_engine
from mechscope.requests import execute
from mechscope.requests.kinds import (
    AUTO_VERIFY,
    DetectHeadsRequest,
    EstimateRequest,
    MassiveRequest,
    RunSetRequest,
    SweepSetRequest,
    TemplateSetRequest,
    request_from_dict,
    request_to_dict,
)
from mechscope.sessions import Session
from mechscope.sessions.replaying import replay
from mechscope.workbench.controller import Inputs, Workbench
from mechscope.workbench.recorder import SessionRecorder
from mechscope.workbench.set_texts import load_set_text
from mechscope.workbench.sets import ESTIMATE_GRID, EXACT_MARK, SET_SWEEP_GRID
from tests.workbench.helpers import IOI, drive, events, recorded_bench, work

ROWS = PromptSet("two", (
    PromptRow("When Mary and John went to the store, John gave a drink to",
              "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
              "Alice and Bob walked to the park, and Alice handed a book to", " Alice", " Bob"),
))


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


def test_rows_become_the_inputs(engine):
    bench = Workbench(IOI)
    request = bench.sets.use(ROWS)
    assert request is not None and request.prompt == ROWS.rows[0].clean
    assert (bench.inputs.corrupted, bench.inputs.target, bench.inputs.foil) == (
        ROWS.rows[0].corrupted, " Mary", " John")
    request = bench.sets.step(1)
    assert request.prompt == ROWS.rows[1].clean and bench.inputs.target == " Alice"
    assert bench.sets.step(1).prompt == ROWS.rows[0].clean  # wraps around
    assert "row 1/2" in bench.sets.describe()


def test_set_numbers_with_and_without_interventions(engine):
    bench = Workbench(IOI)
    drive(bench, engine, bench.sets.use(ROWS))
    drive(bench, engine, bench.edits.add(HeadAblation(0, 1, "zero")))
    drive(bench, engine, bench.sets.run_request())
    result = bench.sets.run.result
    direct = engine.run_set(ROWS, "logit_diff", (HeadAblation(0, 1, "zero"),))
    np.testing.assert_allclose(result.values, direct.values, atol=1e-6)
    np.testing.assert_allclose(result.baseline, direct.baseline, atol=1e-6)
    line = bench.sets.describe()
    assert f"logit diff baseline {np.mean(direct.baseline):+.3f}" in line and "with 1 intervention" in line
    assert "stale" not in line
    bench.edits.remove(bench.edits.stack.entries[0].id)
    assert "stale" in bench.sets.describe()


def test_set_sweep_shows_the_mean_per_cell(engine):
    bench = Workbench(IOI)
    bench.sets.use(ROWS)
    drive(bench, engine, bench.sets.sweep_request())
    assert SET_SWEEP_GRID in bench.sets.grid_names()
    direct = engine.sweep_set(ROWS)
    np.testing.assert_allclose(bench.sets.grid_values(SET_SWEEP_GRID), direct.mean, atol=1e-6)


def test_verify_replaces_the_top_heads_with_exact_patching(engine):
    bench = Workbench(IOI)
    bench.sets.use(ROWS)
    drive(bench, engine, bench.sets.estimate_request("atp", verify_top_k=3))
    estimate = bench.sets.estimate.result
    exact = engine.sweep_set(ROWS).mean
    atp = engine.estimate(ROWS, "atp").mean
    top = np.argsort(-np.abs(atp).ravel(), kind="stable")[:3]
    heads = {divmod(int(i), atp.shape[1]) for i in top}
    assert set(estimate.exact) == heads
    shown = bench.sets.grid_values(ESTIMATE_GRID)
    for layer, head in heads:
        assert shown[layer, head] == pytest.approx(exact[layer, head], abs=1e-5)
    others = np.ones_like(atp, dtype=bool)
    for layer, head in heads:
        others[layer, head] = False
    np.testing.assert_allclose(shown[others], atp[others], atol=1e-6)
    assert bench.sets.exact_marks() == dict.fromkeys(heads, EXACT_MARK)


def test_detectors_and_massive_activations(engine):
    bench = Workbench(IOI)
    bench.sets.use(ROWS)
    drive(bench, engine, bench.sets.detect_request())
    assert "induction" in bench.sets.grid_names()
    assert bench.sets.grid_values("induction").shape == (engine.info.n_layers, engine.info.n_heads)
    drive(bench, engine, bench.sets.massive_request(ratio=5.0))
    layers = bench.sets.massive.result
    assert len(layers) == engine.info.n_layers


def test_template_set_from_the_engine_tokenizer(engine):
    bench = Workbench(IOI)
    drive(bench, engine, bench.sets.template("ioi", 4))
    assert bench.sets.pset is not None and len(bench.sets.pset) == 4
    assert bench.inputs.clean == bench.sets.pset.rows[0].clean


def test_a_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean": "a"}\n{oops\n')
    bench = Workbench(IOI)
    assert bench.sets.load(str(bad)) is None
    assert bench.sets.error is not None and "\n" not in bench.sets.error and ":2" in bench.sets.error


def test_an_engine_without_set_methods_says_so():
    class Plain:
        pass

    outcome = execute(Plain(), RunSetRequest(ROWS))
    assert outcome.error == "Plain cannot run prompt sets (capability 'prompt_sets')"


def test_an_engine_that_lacks_a_capability_refuses_before_running():
    class RunsOnly:
        capabilities = frozenset({"run"})

        def run_set(self, *args, **kwargs):
            raise AssertionError("a refused request must not run")

    outcome = execute(RunsOnly(), RunSetRequest(ROWS))
    assert outcome.error == "RunsOnly cannot run prompt sets (capability 'prompt_sets')"
    assert not outcome.ok and not outcome.cancelled


@pytest.mark.parametrize("request_", [
    RunSetRequest(ROWS, "prob", (HeadAblation(0, 1, "mean"),), "corrupted"),
    SweepSetRequest(ROWS, "loss", "denoising", "mean"),
    EstimateRequest(ROWS, "eap-ig", 3, verify_top_k=4),
    DetectHeadsRequest(),
    MassiveRequest(ROWS, 50.0),
    TemplateSetRequest("capitals", 5, 1),
])
def test_set_requests_travel_as_dicts(request_):
    data = json.loads(json.dumps(request_to_dict(request_)))
    assert request_from_dict(data) == request_


def test_a_bad_set_in_a_request_dict_names_the_field():
    data = request_to_dict(RunSetRequest(ROWS))
    data["pset"]["rows"] = [{"clean": 3}]
    with pytest.raises(ValueError, match="run_set: pset"):
        request_from_dict(data)


def test_set_run_and_sweep_are_recorded_and_replay(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.sets.use(ROWS))
    drive(bench, engine, bench.edits.add(HeadAblation(1, 0, "zero")))
    drive(bench, engine, bench.sets.run_request())
    drive(bench, engine, bench.sets.sweep_request())
    drive(bench, engine, bench.sets.run_request())  # the same set: recorded once
    logged = events()
    kinds = [e["request"]["kind"] if e.kind == "request" else e.kind for e in logged]
    assert kinds.count("prompt_set") == 1 and kinds.count("run_set") == 2 and kinds.count("sweep_set") == 1
    set_event = next(e for e in logged if e.kind == "prompt_set")
    assert PromptSet.from_dict(set_event.payload) == ROWS
    run_request = work("run_set")[0]
    assert PromptSet.from_dict(run_request["pset"]) == ROWS
    assert run_request["interventions"] == [HeadAblation(1, 0, "zero").to_dict()]
    session = Session.open("study")
    assert session.state().prompt_set["name"] == "two"
    resumed = Workbench(IOI)
    resumed.sets.restore(session.state().prompt_set)
    assert resumed.sets.pset == ROWS and resumed.sets.row == 0 and resumed.sets.run is None
    steps = replay(session, engine)
    kinds = [s.kind for s in steps]
    assert "run_set" in kinds and "sweep_set" in kinds
    assert all(step.matches for step in steps), [s.detail for s in steps if not s.matches]


def test_replay_notices_a_changed_set_run(engine):
    bench = recorded_bench(engine)
    bench.sets.use(ROWS)
    drive(bench, engine, bench.sets.run_request())
    session = bench.recorder.session
    event = next(e for e in session.events if e.kind == "request" and e["request"]["kind"] == "run_set")
    outcome = {**event["outcome"], "values": [v + 1.0 for v in event["outcome"]["values"]]}
    session.record("request", **{**event.payload, "outcome": outcome})
    steps = [s for s in replay(Session.open("study"), engine) if s.kind == "run_set"]
    assert [s.matches for s in steps] == [True, False]
    assert "values: 2 row(s) differ" in steps[1].detail


def test_dialog_texts(tmp_path):
    bench = Workbench(IOI)
    request = bench.sets.open(load_set_text("capitals 3 1"))
    assert request == TemplateSetRequest("capitals", 3, 1)
    assert bench.sets.open(load_set_text("ioi")) == TemplateSetRequest("ioi", 20, 0)
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(ROWS.rows[0].to_dict()) + "\n")
    assert bench.sets.open(load_set_text(str(path))).prompt == ROWS.rows[0].clean
    assert bench.sets.estimate_text("eap-ig steps 3 verify 2") == EstimateRequest(
        bench.sets.pset, "eap-ig", 3, verify_top_k=2)
    assert bench.sets.estimate_text("atp verify x") is None and "whole number" in bench.sets.error
    assert bench.sets.estimate_text("magic") is None and "unknown estimator" in bench.sets.error


def test_the_estimate_verifies_automatically_by_default(engine):
    bench = Workbench(IOI)
    bench.sets.use(ROWS)
    assert bench.sets.estimate_text("atp") == EstimateRequest(ROWS, "atp", verify_top_k=AUTO_VERIFY)
    request = bench.sets.estimate_text("atp verify auto")  # the latest request is the one accepted
    assert request is not None and request.verify_top_k == AUTO_VERIFY
    drive(bench, engine, request)
    estimate = bench.sets.estimate.result
    exact = engine.sweep_set(ROWS).mean  # [layer, head], every head patched exactly
    assert estimate.exact, "automatic verification checks at least the estimate's top heads"
    for (layer, head), value in estimate.exact.items():
        assert value == pytest.approx(exact[layer, head], abs=1e-5)


def test_resuming_brings_back_the_set_its_row_and_every_set_result(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.sets.use(ROWS))
    drive(bench, engine, bench.sets.step(1))
    drive(bench, engine, bench.sets.run_request())
    drive(bench, engine, bench.sets.sweep_request())
    drive(bench, engine, bench.sets.estimate_request("atp", verify_top_k=2))
    drive(bench, engine, bench.sets.detect_request())
    drive(bench, engine, bench.sets.massive_request(3.0))
    drive(bench, engine, bench.sweeps.start("head"))
    bench.recorder.close()
    recorded = [e["request"]["kind"] for e in events() if e.kind == "request"]
    assert {"run_set", "sweep_set", "estimate", "detect_heads", "massive", "sweep"} <= set(recorded)

    session = Session.open("study")
    written = len(session.events)
    resumed = Workbench(Inputs("", "", "", ""), SessionRecorder(session))
    resumed.restore_session(session.state())
    sets, before = resumed.sets, bench.sets
    assert sets.pset == ROWS and sets.row == 1 and resumed.inputs.clean == ROWS.rows[1].clean
    np.testing.assert_allclose(sets.run.result.values, before.run.result.values, atol=1e-6)
    np.testing.assert_allclose(sets.run.result.baseline, before.run.result.baseline, atol=1e-6)
    assert "set numbers not computed" not in sets.describe()
    np.testing.assert_allclose(sets.grid_values(SET_SWEEP_GRID), before.grid_values(SET_SWEEP_GRID), atol=1e-6)
    np.testing.assert_allclose(sets.grid_values(ESTIMATE_GRID), before.grid_values(ESTIMATE_GRID), atol=1e-6)
    assert sets.exact_marks() == before.exact_marks() and len(sets.exact_marks()) == 2
    assert set(sets.detectors.scores) == set(before.detectors.scores)
    for name, grid in before.detectors.scores.items():
        np.testing.assert_allclose(sets.detectors.scores[name], grid, atol=1e-6)
    assert [m.dims for m in sets.massive.result] == [m.dims for m in before.massive.result]
    assert sets.grid_names() == before.grid_names()
    np.testing.assert_allclose(resumed.sweeps.states["head"].result.values, bench.sweeps.states["head"].result.values,
                               atol=1e-6)
    drive(resumed, engine, resumed.sets.run_request())  # the same set: not recorded again
    after = Session.open("study").events[written:]
    assert [e.kind for e in after] == ["request"]


BAD_ROWS = PromptSet("bad", (
    ROWS.rows[0],
    PromptRow(ROWS.rows[0].clean, ROWS.rows[0].corrupted, "Mary", " John"),  # spacing: ' Mary' is one token
    PromptRow(ROWS.rows[0].clean, ROWS.rows[0].corrupted, " Lisa", " John"),  # four tokens even spaced
    PromptRow(ROWS.rows[0].clean, ROWS.rows[0].corrupted + " now", " Mary", " John"),  # lengths differ
    ROWS.rows[1],
))


@pytest.fixture(scope="module")
def tiny():
    return tiny_engine()


def checked_bench(engine) -> Workbench:
    bench = Workbench(IOI, SessionRecorder(None))
    bench.sets.tokenize = engine.tokenize
    return bench


def test_loading_a_set_names_the_rows_that_fail_the_single_prompt_checks(tiny):
    bench = checked_bench(tiny)
    bench.sets.use(BAD_ROWS)
    problems = {p.row + 1: p for p in bench.sets.problems}
    assert sorted(problems) == [2, 3, 4]
    assert problems[2].reasons == ("target 'Mary' is 2 tokens ['Mar', 'y']; ' Mary' is one",)
    assert problems[2].fixable and problems[2].spaced.target == " Mary"
    assert problems[3].reasons == ("target ' Lisa' is 4 tokens [' ', 'L', 'is', 'a']; only ' ' counts",)
    assert not problems[3].fixable
    n_clean, n_corrupted = (len(tiny.tokenize(text)[0]) for text in (BAD_ROWS.rows[3].clean, BAD_ROWS.rows[3].corrupted))
    assert n_clean != n_corrupted
    assert problems[4].reasons == (f"clean is {n_clean} tokens, corrupted {n_corrupted} "
                                   "(a sweep patches position by position)",)
    assert not problems[4].fixable


def test_a_single_token_target_without_its_space_is_flagged_after_a_word(tiny):
    bench = checked_bench(tiny)
    assert tiny.tokenize("gave")[1] == ["gave"] and tiny.tokenize(" gave")[1] == [" gave"]
    bench.sets.use(PromptSet("one", (PromptRow("Mary and John", "", "gave", ""),
                                     PromptRow("Mary and John ", "", "gave", ""),
                                     PromptRow("Mary and John", "", " gave", ""))))
    assert [(p.row, p.reasons, p.fixable) for p in bench.sets.problems] == [
        (0, ("target 'gave' has no leading space; after a word the model predicts ' gave'",), True)]


def test_fixing_spacing_makes_a_new_set_that_the_set_run_carries(tiny):
    bench = checked_bench(tiny)
    bench.sets.use(BAD_ROWS)
    bench.sets.fix_spacing()
    fixed = bench.sets.pset
    assert fixed is not None and fixed != BAD_ROWS
    assert fixed.rows[1].target == " Mary" and fixed.rows[2] == BAD_ROWS.rows[2]
    assert bench.sets.changes == "spacing fixed in rows 2"
    assert [p.row + 1 for p in bench.sets.problems] == [3, 4]
    request = bench.sets.run_request()
    assert request is not None and request.pset.rows[1].target == " Mary"
    assert bench.sets.fix_spacing() is None and "no row" in (bench.sets.error or "")


def test_dropping_failing_rows_leaves_the_good_ones_and_says_which_went(tiny):
    bench = checked_bench(tiny)
    bench.sets.use(BAD_ROWS)
    bench.sets.drop_failing_rows()
    assert bench.sets.pset is not None
    assert bench.sets.pset.rows == (BAD_ROWS.rows[0], BAD_ROWS.rows[4])
    assert bench.sets.problems == []
    assert bench.sets.changes.startswith("dropped rows 2, 3, 4 of 5: row 2: target 'Mary'")
    outcome = execute(tiny, bench.sets.run_request())
    assert outcome.ok and len(outcome.result.baseline) == 2


def test_loading_a_good_set_after_a_bad_file_clears_the_error(tmp_path, tiny):
    bench = checked_bench(tiny)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert bench.sets.load(str(bad)) is None and bench.sets.error
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(row.to_dict()) for row in ROWS.rows) + "\n")
    assert bench.sets.load(str(good)) is not None
    assert bench.sets.error is None and bench.sets.problems == []


def test_a_set_present_before_the_engine_is_checked_when_it_arrives(tiny):
    bench = Workbench(IOI, SessionRecorder(None))
    bench.sets.use(BAD_ROWS)
    assert bench.sets.problems == []
    bench.sets.check(tiny.tokenize)
    assert [p.row + 1 for p in bench.sets.problems] == [2, 3, 4]
