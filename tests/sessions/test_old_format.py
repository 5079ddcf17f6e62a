"""Sessions written before work was recorded as requests (fixtures/old-format, made by
fixtures/make_old_format.py with that code) still open, replay, export and resume: each old run,
sweep, generate, set_run and set_sweep event reads as the request it stands for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.testing import tiny_engine
from mechscope.requests import Summary, handler_for
from mechscope.requests.kinds import RunRequest, RunSetRequest, SweepRequest, SweepSetRequest
from mechscope.requests.tolerance import tolerance_for
from mechscope.sessions import Session, replay
from mechscope.workbench.controller import Inputs, Workbench

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old-format"
REPO_ROOT = Path(__file__).resolve().parents[2]
OLD_WORK = ["run", "run", "sweep", "generate", "run", "run", "run_set", "sweep_set", "run"]


@pytest.fixture
def old(tmp_path: Path) -> Session:
    copy = tmp_path / "old-format"
    shutil.copytree(FIXTURE, copy)
    return Session.open(copy)


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")  # the model the fixture was recorded on


def test_old_events_read_as_their_requests(old: Session) -> None:
    work = old.work()
    assert [e.kind for e in work] == ["run", "run", "sweep", "generate", "run", "run", "set_run",
                                      "set_sweep", "run"]
    requests = [old.outcome(e)[0] for e in work]
    assert [r.kind for r in requests] == OLD_WORK
    first = requests[0]
    assert isinstance(first, RunRequest) and first.metric is not None and first.interventions == ()
    sweep, summary = old.outcome(work[2])
    assert isinstance(sweep, SweepRequest) and sweep.sweep_kind == "head"
    assert summary.arrays["values"].shape == (3, 4)
    set_run = requests[6]
    assert isinstance(set_run, RunSetRequest) and set_run.pset == old.prompt_set(13)
    assert isinstance(requests[7], SweepSetRequest) and requests[7].pset.name == "two"


def test_old_session_replays_on_its_model(old: Session, engine) -> None:
    steps = replay(old, engine)
    assert [s.kind for s in steps] == OLD_WORK
    assert all(s.matches for s in steps), [s.detail for s in steps if not s.matches]
    assert steps[0].recorded == steps[0].recomputed


def test_old_session_resumes_with_its_prompt_set_and_results(old: Session) -> None:
    state = old.state()
    bench = Workbench(Inputs("", "", "", ""))
    bench.restore_session(state)
    assert bench.inputs.clean.startswith("When Mary and John")
    assert bench.sets.pset == PromptSet.from_dict(state.prompt_set) and bench.sets.row == 0
    assert bench.sets.run is not None and bench.sets.sweep is not None
    recorded = [e for e in old.events if e.kind == "set_run"][0]
    np.testing.assert_allclose(bench.sets.run.result.values, recorded["values"])
    sweep_event = [e for e in old.events if e.kind == "set_sweep"][0]
    np.testing.assert_allclose(bench.sets.sweep_values(), old.tensor(sweep_event), atol=1e-7)
    assert bench.sweeps.states["head"].done
    np.testing.assert_allclose(bench.sweeps.states["head"].result.values,
                               old.tensor([e for e in old.events if e.kind == "sweep"][0]))
    assert "happy" in bench.vectors.norms
    assert bench.reference_prompts == ("The cat sat on the mat", "One two three")


def test_old_session_exports_a_script_that_reproduces_it(old: Session, tiny_folder: Path,
                                                        tmp_path: Path) -> None:
    from mechscope.sessions.export import export_script

    script = tmp_path / "old.py"
    script.write_text(export_script(old, filename="old.py"))
    summaries = tmp_path / "summaries.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_folder), "--summaries", str(summaries)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(summaries.read_text())
    assert [item["kind"] for item in exported] == OLD_WORK
    tolerance = tolerance_for("cpu", "float32")
    for event, item in zip(old.work(), exported):
        request, recorded = old.outcome(event)
        handler = handler_for(request)
        recomputed = Summary(item["outcome"], {k: np.asarray(v, dtype=np.float32)
                                               for k, v in item["arrays"].items()})
        assert handler.compare(recorded, recomputed, tolerance) == [], event.seq


@pytest.mark.parametrize("line", [2, 3, 6])  # a metric event, an old run, an old sweep
def test_an_old_metric_with_a_fractional_position_is_refused_on_open(old: Session, line: int,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Metric.from_dict does not check the position's type: replaying the old run or sweep raised
    IndexError from the engine."""
    from mechscope.cli import main

    lines = old.events_path.read_text().splitlines()
    event = json.loads(lines[line - 1])
    event["metric"]["position"] = 0.5
    lines[line - 1] = json.dumps(event)
    old.events_path.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(old.path), "--check", "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {old.events_path}:{line}: metric.position must be an integer, got float\n"
