"""The Workbench without a terminal: commands return requests, accept() stores and records outcomes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mechscope.engine.interventions import ActivationPatch, HeadAblation, HeadScale
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_engine
from mechscope.requests import execute
from mechscope.requests.kinds import GenerateRequest, RunRequest, SweepRequest, ValidateRequest
from mechscope.sessions import Session
from mechscope.workbench.controller import Workbench
from mechscope.workbench.recorder import SessionRecorder
from tests.workbench.helpers import IOI, drive, events, recorded_bench, work


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


def test_toggle_runs_the_stack_and_off_restores_the_baseline_exactly(engine):
    bench = Workbench(IOI)
    bench.select(1, 1)
    drive(bench, engine, bench.next_run())
    baseline = bench.result
    request = bench.edits.ablate("zero")
    assert isinstance(request, RunRequest) and request.interventions == (HeadAblation(1, 1),)
    assert request.metric == Metric("logit_diff", " Mary", " John")
    drive(bench, engine, request)
    assert bench.result.metric != baseline.metric
    expected = engine.run(IOI.clean, [HeadAblation(1, 1)], metric=request.metric, corrupted=IOI.corrupted)
    assert bench.result.metric == pytest.approx(expected.metric, abs=1e-6)
    drive(bench, engine, bench.edits.toggle(bench.edits.stack.entries[0].id))
    np.testing.assert_array_equal(bench.result.prediction.logits, baseline.prediction.logits)
    assert bench.next_run() is None  # nothing changed: no second request for the same state


def test_undo_steps_back_and_says_when_there_is_nothing(engine):
    bench = Workbench(IOI)
    bench.select(0, 0)
    bench.edits.ablate("zero")
    bench.select(0, 1)
    bench.edits.ablate("mean")
    bench.select(1, 1)
    bench.edits.patch_selected()
    assert [e.intervention for e in bench.edits.stack.entries] == [
        HeadAblation(0, 0), HeadAblation(0, 1, mode="mean"), ActivationPatch("L1.H1", IOI.corrupted)]
    request = bench.edits.undo()
    assert request.interventions == (HeadAblation(0, 0), HeadAblation(0, 1, mode="mean"))
    bench.edits.undo()
    assert bench.edits.undo().interventions == ()
    assert bench.edits.undo() is None and bench.error == "nothing to undo"


def test_superseded_run_is_neither_shown_nor_recorded(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    first = bench.run
    in_flight = bench.edits.ablate("zero")
    outcome = execute(engine, in_flight)
    bench.set_inputs(dataclasses.replace(IOI, clean=IOI.clean + " her"))  # typed while it ran
    assert bench.accept(outcome) is None
    assert bench.run is first and not bench.result_is_current
    runs = work("run")
    assert len(runs) == 1 and runs[0]["interventions"] == []


def test_failed_run_keeps_the_last_result_but_not_as_current(engine):
    bench = Workbench(IOI)
    drive(bench, engine, bench.next_run())
    shown = bench.run
    bench.select(0, 99)  # a head the model does not have
    drive(bench, engine, bench.edits.ablate("zero"))
    assert bench.run is shown and not bench.result_is_current
    assert bench.error.startswith("run failed: ") and "99" in bench.error
    bench.select(0, 0)
    drive(bench, engine, bench.edits.undo())  # back to the inputs that ran before: they run again
    assert bench.run is not shown and bench.result_is_current and bench.error is None


def test_work_that_succeeds_clears_an_earlier_error_but_not_a_failed_runs(engine):
    """The status line's error goes with the next success of any work, not only of a live run."""
    bench = Workbench(IOI)
    drive(bench, engine, bench.next_run())
    sweep = bench.sweeps.start("head")
    bench.edits.undo()
    assert bench.error == "nothing to undo"
    drive(bench, engine, sweep)
    assert bench.error is None
    sweep = bench.sweeps.start("head")
    bench.select(0, 99)  # a head the model does not have: the live run fails while the sweep runs
    drive(bench, engine, bench.edits.ablate("zero"))
    failed = bench.error
    assert failed.startswith("run failed: ")
    drive(bench, engine, sweep)
    assert bench.sweeps.states["head"].result is not None
    assert bench.error == failed  # the panes still say the last run failed: E must show why
    bench.select(0, 0)
    drive(bench, engine, bench.edits.undo())
    assert bench.error is None and bench.result_is_current
    bench.edits.undo()
    drive(bench, engine, bench.attention_request())  # the cursor moved: not work the user asked for
    assert bench.attention and bench.error == "nothing to undo"


def test_sweeps_go_stale_and_say_what_changed(engine):
    bench = Workbench(IOI)
    request = bench.sweeps.start("head")
    assert isinstance(request, SweepRequest) and request.metric == bench.metric()
    drive(bench, engine, request)
    values = bench.sweeps.states["head"].result.values
    np.testing.assert_array_equal(bench.sweeps.values("head"), values)
    assert bench.sweeps.staleness("head") is None
    bench.set_inputs(dataclasses.replace(IOI, target=" John", foil=" Mary"))
    assert bench.sweeps.staleness("head") == "metric changed" and bench.sweeps.values("head") is None
    bench.set_inputs(dataclasses.replace(IOI, clean=IOI.clean.replace("drink", "book")))
    assert bench.sweeps.staleness("head") == "prompts changed"
    bench.set_inputs(dataclasses.replace(IOI, corrupted="x", foil=" Bob"))
    assert bench.sweeps.staleness("head") == "prompts and metric changed"
    bench.set_inputs(IOI)
    np.testing.assert_array_equal(bench.sweeps.values("head"), values)  # back to its inputs


def test_sweep_needs_both_prompts_and_a_metric():
    bench = Workbench(dataclasses.replace(IOI, corrupted=""))
    assert bench.sweeps.start("head") is None and "corrupted" in bench.error
    bench = Workbench(dataclasses.replace(IOI, target=""))
    assert bench.sweeps.start("head") is None and "target" in bench.error


def test_proposed_intervention_is_checked_before_it_enters_the_list(engine):
    bench = Workbench(IOI)
    request = bench.edits.propose(HeadScale(0, 9, 2.0))
    assert isinstance(request, ValidateRequest)
    drive(bench, engine, request)
    assert bench.edits.stack.entries == () and bench.error.startswith("not added: ")
    request = bench.edits.propose(HeadScale(0, 1, 2.0))
    follow_up = bench.accept(execute(engine, request))
    assert [e.intervention for e in bench.edits.stack.entries] == [HeadScale(0, 1, 2.0)]
    assert isinstance(follow_up, RunRequest) and follow_up.interventions == (HeadScale(0, 1, 2.0),)


def test_patch_follows_the_corrupted_prompt_until_pinned(engine):
    bench = Workbench(IOI)
    bench.select(1, 1)
    bench.edits.patch_selected()
    entry = bench.edits.stack.entries[0]
    assert bench.edits.label(entry) == "patch L1.H1 ← corrupted"
    edited = dataclasses.replace(IOI, corrupted=IOI.corrupted.replace("Mary and John", "John and Mary"))
    request = bench.set_inputs(edited)
    assert request.interventions == (ActivationPatch("L1.H1", edited.corrupted),)
    drive(bench, engine, bench.edits.replace(entry.id, ActivationPatch("L1.H1", "Pinned source")))
    assert bench.edits.label(bench.edits.stack.entries[0]) == "patch L1.H1 ← pinned 'Pinned source'"
    request = bench.set_inputs(IOI)
    assert request.interventions == (ActivationPatch("L1.H1", "Pinned source"),)


def test_generation_records_the_interventions_it_ran_with(engine):
    bench = recorded_bench(engine)
    bench.edits.ablate("zero")
    request = bench.generations.start()
    assert isinstance(request, GenerateRequest) and request.interventions == (HeadAblation(0, 0),)
    baseline = bench.generations.latest.baseline
    assert baseline.interventions == () and baseline.prompt == request.prompt
    bench.accept(execute(engine, baseline))
    bench.edits.undo()  # while the intervened lane runs
    bench.accept(execute(engine, request))
    assert bench.generations.latest.done and not bench.generations.is_current()
    generated = work("generate")
    assert len(generated) == 1 and generated[0]["interventions"] == [HeadAblation(0, 0).to_dict()]
    assert generated[0]["max_new_tokens"] == request.max_new_tokens


class FlakySession:
    """A session whose writes fail while `failing` is set (a full or read-only disk)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.failing = False

    def __getattr__(self, name: str):
        attribute = getattr(self.session, name)
        if name.startswith(("record", "save_")) and callable(attribute):
            def write(*args, **kwargs):
                if self.failing:
                    raise OSError(28, "No space left on device")
                return attribute(*args, **kwargs)
            return write
        return attribute


def test_recorder_status_never_contradicts_itself_and_lost_sweeps_can_be_retried(engine):
    flaky = FlakySession(Session.create(name="study", engine=engine))
    bench = Workbench(IOI, SessionRecorder(flaky))
    drive(bench, engine, bench.next_run())
    assert bench.recorder.status == "saved" and bench.recorder.describe() == "session study saved"
    flaky.failing = True
    drive(bench, engine, bench.sweeps.start("head"))
    recorder = bench.recorder
    assert recorder.status == "not saved" and "No space left" in recorder.reason
    assert [u.what for u in recorder.unsaved] == ["head sweep"]
    line = recorder.describe()
    assert line == "session study NOT SAVED: [Errno 28] No space left on device · unwritten: head sweep " \
                   "(Retry saving)"
    assert recorder.retry_unsaved() == 1  # still failing: kept
    flaky.failing = False
    bench.select(0, 0)
    drive(bench, engine, bench.edits.ablate("zero"))  # a later write works: the status clears
    assert recorder.status == "saved" and recorder.reason is None
    assert [u.what for u in recorder.unsaved] == ["head sweep"]  # but the lost sweep is still listed
    assert recorder.describe() == "session study saved · unwritten: head sweep (Retry saving)"
    assert recorder.retry_unsaved() == 0 and recorder.unsaved == []
    kinds = [e["request"]["kind"] if e.kind == "request" else e.kind for e in events()]
    assert kinds.count("sweep") == 1 and kinds[-1] == "sweep"


def test_without_a_session_nothing_is_recorded_and_it_says_so():
    recorder = SessionRecorder(None, "session not recorded: read-only file system")
    assert recorder.status == "not recording"
    assert recorder.describe() == "session not recorded: read-only file system"
    recorder.note("hello")
    assert recorder.unsaved == [] and recorder.status == "not recording"


def test_restore_puts_a_session_back_and_following_patches_follow(engine):
    bench = recorded_bench(engine)
    bench.select(1, 1)
    drive(bench, engine, bench.edits.patch_selected())
    edited = dataclasses.replace(IOI, corrupted=IOI.corrupted.replace("Mary and John", "John and Mary"))
    drive(bench, engine, bench.set_inputs(edited))
    bench.recorder.close()
    state = Session.open("study").state()
    assert state.interventions == [(1, ActivationPatch("L1.H1", edited.corrupted))]  # what ran last
    resumed = Workbench(IOI, SessionRecorder(Session.open("study")))
    resumed.restore(state.clean, state.corrupted, state.metric, state.interventions)
    assert resumed.inputs == edited and resumed.edits.follows == {1}
    assert resumed.edits.stack.next_id == 2


def test_feature_edits_from_the_features_tab_toggle_replace_and_need_a_selection(engine, tmp_path):
    from mechscope.engine.features.formats import save_saelens
    from mechscope.engine.interventions import FeatureAblation, FeatureClamp
    from tests.features.saes import random_sae

    folder = str(save_saelens(random_sae("L1.resid_post", seed=2), tmp_path / "sae"))
    bench = Workbench(IOI)
    drive(bench, engine, bench.next_run())
    assert bench.edits.toggle_feature_ablation() is None and "no feature selected" in bench.error
    drive(bench, engine, bench.features.use_folder(folder))
    drive(bench, engine, bench.features.card_request())
    features = bench.features
    last, feature = features.token(), features.selected()
    assert features.card_result().feature == feature and features.card_request() is None  # in hand
    drive(bench, engine, bench.edits.toggle_feature_ablation())  # checked by a dry run, then added
    ablation = FeatureAblation("L1.resid_post", folder, feature, positions=(last,))
    assert bench.interventions() == (ablation,)
    drive(bench, engine, bench.edits.toggle_feature_ablation())  # again: taken away
    assert bench.interventions() == ()
    drive(bench, engine, bench.edits.set_feature_edit(features.edit("clamp", 1.0)))
    drive(bench, engine, bench.edits.set_feature_edit(features.edit("clamp", 3.0)))  # the same feature and token: replaced
    assert bench.interventions() == (FeatureClamp("L1.resid_post", folder, feature, 3.0, positions=(last,)),)
    features.move_token(-1)
    drive(bench, engine, bench.edits.set_feature_edit(features.edit("clamp", 3.0)))  # another token: added
    assert len(bench.interventions()) == 2 and bench.interventions()[1].positions == (last - 1,)
    expected = engine.run(IOI.clean, list(bench.interventions()), metric=bench.metric(), corrupted=IOI.corrupted)
    assert bench.result.metric == pytest.approx(expected.metric, abs=1e-6)


def test_the_feature_strip_ranks_features_after_the_attention_sink(engine, tmp_path):
    from mechscope.engine.features.formats import save_saelens
    from tests.features.saes import random_sae

    folder = str(save_saelens(random_sae("L1.resid_post", seed=2), tmp_path / "sae"))
    bench = Workbench(IOI)
    drive(bench, engine, bench.next_run())
    drive(bench, engine, bench.features.use_folder(folder))
    features = bench.features
    result = features.result
    ids, values = result.ids.copy(), result.values.copy()  # [pos, k]
    ids[0, 0], values[0, 0] = 999_999, 500.0  # a feature firing hugely on the first token only
    features.outcome = dataclasses.replace(features.outcome, result=dataclasses.replace(result, ids=ids, values=values))
    chosen, grid = features.strip(rows=3)
    peak: dict[int, float] = {}
    for f, v in zip(ids[1:].ravel().tolist(), values[1:].ravel().tolist()):
        if f >= 0:
            peak[f] = max(peak.get(f, 0.0), v)
    expected = sorted(peak, key=lambda f: (-peak[f], f))[:3]
    selected = features.selected()
    if selected not in expected:
        expected[-1] = selected
    assert chosen == expected and 999_999 not in chosen
    for row, f in enumerate(chosen):
        pos, rank = np.nonzero(ids == f)
        assert grid[row, pos].tolist() == values[pos, rank].tolist()
