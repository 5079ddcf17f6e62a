"""Replay: recorded outcomes recompute within tolerance on the same model and drift on another."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.sessions import Session, replay, tolerance_for
from mechscope.sessions.events import work_kind
from mechscope.sessions.replaying import Tolerance, compare_outcomes, count_steps
from tests.sessions.helpers import record_ioi_session


def test_replay_on_the_recording_engine_matches(folder_engine) -> None:
    record_ioi_session(folder_engine, "ioi")
    session = Session.open("ioi")
    kinds = [work_kind(e) or e.kind for e in session]
    assert {"prompt", "metric", "intervention", "vector", "reference_prompts", "run", "sweep",
            "generate", "note"} <= set(kinds)
    seen = []
    steps = replay(session, folder_engine, on_step=seen.append)
    assert seen == steps
    assert [s.kind for s in steps] == ["run"] * 5 + ["sweep", "generate"]
    assert len(steps) == count_steps(session)
    assert all(s.matches for s in steps), [s.detail for s in steps if not s.matches]
    run = steps[0]
    assert run.recorded == run.recomputed and run.status == "ok"
    assert run.recorded_data["top_ids"] == run.recomputed_data["top_ids"]
    # replay leaves the engine's own vectors and reference prompts as they were
    assert "happy" not in folder_engine.vectors


def test_state_restores_the_last_results(folder_engine) -> None:
    record_ioi_session(folder_engine, "ioi")
    state = Session.open("ioi").state()
    assert state.clean == "The cat sat on the" and state.corrupted is None
    assert state.metric.kind == "prob"
    assert [ident for ident, _ in state.interventions] == [1, 3, 4, 5, 6]
    assert state.interventions[0][1].enabled is False
    assert state.vectors["happy"].shape == (folder_engine.info.d_model,)
    assert state.reference_prompts == ["The cat sat on the mat", "One two three four five"]
    expected = folder_engine.run("The cat sat on the", [], metric=state.metric)
    assert state.last_outcome["top_ids"] == [t.id for t in expected.top]
    assert state.last_sweep["request"]["sweep_kind"] == "head" and state.last_generate is not None
    assert set(state.work) == {"run", "sweep", "generate"}
    sweeps = [o for o in state.outcomes if o.request.kind == "sweep"]  # rebuilt to show again
    assert len(sweeps) == 1 and sweeps[0].result.values.shape == (folder_engine.info.n_layers,
                                                                    folder_engine.info.n_heads)


def test_replay_on_other_weights_drifts(folder_engine, other_tiny_folder) -> None:
    from mechscope.engine import Engine

    record_ioi_session(folder_engine, "ioi")
    other = Engine.load(str(other_tiny_folder), device="cpu")
    steps = replay(Session.open("ioi"), other)
    assert len(steps) == 7
    assert not any(s.matches for s in steps)
    assert all(s.status == "DRIFT" for s in steps)
    assert "metric" in steps[0].detail


def test_a_step_that_fails_is_an_error_not_an_exception(folder_engine) -> None:
    from mechscope.engine import HeadAblation, Metric

    session = Session.create("bad-head", engine=folder_engine)
    metric = Metric("logit_diff", " Mary", " John")
    result = folder_engine.run("When Mary and John", [], metric=metric)
    session.record_run("When Mary and John", None, metric, [HeadAblation(1, 99)], result)
    session.save_vector("narrow", np.ones(8, dtype=np.float32))  # the model is 32 wide
    steps = replay(Session.open("bad-head"), folder_engine)
    assert [(s.kind, s.status) for s in steps] == [("run", "ERROR"), ("vector", "ERROR")]
    assert steps[0].detail.startswith("error: ") and "99" in steps[0].detail
    assert steps[1].recorded == "vector 'narrow' [8]" and "width 8" in steps[1].detail


def test_tolerances_depend_on_device_and_dtype() -> None:
    assert tolerance_for("cpu", "float32").prob_atol == 1e-4
    assert tolerance_for("cpu", "float32").metric_atol == 1e-3
    assert tolerance_for("cuda:0", "float32").prob_atol == 1e-3
    assert tolerance_for("cuda:0", "torch.float16").metric_atol == 1e-1
    assert tolerance_for("cuda", "bfloat16").prob_atol == 5e-2
    loose = tolerance_for("cpu", "float32").looser(tolerance_for("cuda", "bfloat16"))
    assert loose.label.startswith("bfloat16")


def _outcome(ids, probs, metric=1.0):
    return {"top_ids": ids, "top_tokens": [str(i) for i in ids], "top_probs": probs,
            "metric": metric, "baseline_metric": 2.0}


def test_compare_outcomes_rules() -> None:
    tol = Tolerance(1e-4, 1e-3, 1e-4)
    base = _outcome([5, 7, 9], [0.5, 0.3, 0.1])
    assert compare_outcomes(base, _outcome([5, 7, 9], [0.50005, 0.3, 0.1], 1.0005), tol) == []
    assert compare_outcomes(base, _outcome([5, 7, 9], [0.5003, 0.3, 0.1]), tol)[0].startswith("p at rank 1")
    assert "metric +1.000000 -> +1.010000" in compare_outcomes(
        base, _outcome([5, 7, 9], [0.5, 0.3, 0.1], 1.01), tol)
    assert compare_outcomes(base, _outcome([5, 9, 7], [0.5, 0.3, 0.1]), tol)[0].startswith(
        "token at rank 2")
    # a near-tie may swap ranks or cross the top-k boundary
    tied = _outcome([5, 7, 9], [0.5, 0.30001, 0.3])
    assert compare_outcomes(tied, _outcome([5, 9, 7], [0.5, 0.30001, 0.3]), tol) == []
    edge = _outcome([5, 7, 9], [0.5, 0.3, 0.10001])
    assert compare_outcomes(edge, _outcome([5, 7, 11], [0.5, 0.3, 0.1]), tol) == []
    assert compare_outcomes(base, _outcome([5, 7, 11], [0.5, 0.3, 0.1002]), tol) != []
    assert compare_outcomes(base, {**base, "metric": None}, tol) == ["metric +1.000000 -> none"]


def test_incomplete_sweep_compares_finished_cells_only(folder_engine) -> None:
    from dataclasses import replace

    from mechscope.engine import Metric

    metric = Metric("logit_diff", " Mary", " John")
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    full = folder_engine.sweep("head", clean, corrupt, metric)
    partial_values = np.array(full.values, dtype=np.float32)
    partial_values[1:] = np.nan
    session = Session.create("partial", engine=folder_engine)
    session.record_sweep(replace(full, values=partial_values, complete=False), clean, corrupt, metric)
    steps = replay(Session.open("partial"), folder_engine)
    assert [s.status for s in steps] == ["ok"]
    bumped = partial_values.copy()
    bumped[0, 0] += 0.5
    session.record_sweep(replace(full, values=bumped, complete=False), clean, corrupt, metric)
    steps = replay(Session.open("partial"), folder_engine)
    assert [s.status for s in steps] == ["ok", "DRIFT"]
    assert "1 cell(s) differ, e.g. [0, 0]" in steps[1].detail


@pytest.mark.demo
def test_demo_session_replays_cleanly_and_drifts_elsewhere(demo_engine, tiny_folder,
                                                           capsys) -> None:
    from mechscope.cli import main

    session = record_ioi_session(demo_engine, "demo-ioi", sweep_kind="atp")  # the cheap sweep
    assert session.model_source == "demo"
    assert main(["replay", "demo-ioi", "--check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "7 steps: 7 ok, 0 drifted" in out
    assert main(["replay", "demo-ioi", "--check", "--model", str(tiny_folder)]) == 1
    out = capsys.readouterr().out
    assert " ok\n" not in out and "drifted" in out
    assert "vector 'happy' [576]" in out  # a 576-wide vector does not fit the tiny model
