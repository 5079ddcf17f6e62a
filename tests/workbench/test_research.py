"""Research commands of the Workbench without a terminal: metric position and KL, sweeps in both
directions on top of interventions, the pinned baseline, reference prompts, generation settings,
steering norms and exports."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
from safetensors.numpy import load_file

from mechscope.engine.interventions import HeadAblation, HeadScale, SteeringVector
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_engine
from mechscope.sessions import Session
from mechscope.sessions.replaying import (
    replay,  # the function: the package attribute may be the submodule
)
from mechscope.workbench.exports import (
    attribution_to_csv,
    lens_to_csv,
    sweep_to_csv,
    sweep_to_safetensors,
)
from tests.workbench.helpers import IOI, LoggingEngine, drive, events, recorded_bench, work


@pytest.fixture
def engine():
    return LoggingEngine("llama")


def test_metric_position_is_validated_and_carried(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    n = len(bench.result.tokens)
    assert bench.set_metric_position(str(n)) is None
    assert "outside the prompt" in bench.error and bench.metric_position == -1
    assert bench.set_metric_position("abc") is None and "whole number" in bench.error
    request = bench.set_metric_position("3")
    assert request is not None and request.metric.position == 3 and bench.error is None
    drive(bench, engine, request)
    independent = engine.inner.run(IOI.clean, metric=Metric("logit_diff", " Mary", " John", position=3))
    assert bench.result.metric == pytest.approx(independent.metric)
    assert work("run")[-1]["metric"]["position"] == 3


def test_kl_metric_needs_no_target_and_is_zero_without_interventions(engine):
    bench = recorded_bench(engine, inputs=dataclasses.replace(IOI, target="", foil="", metric_kind="kl"))
    drive(bench, engine, bench.next_run())
    assert bench.result.metric == pytest.approx(0.0, abs=1e-6)
    drive(bench, engine, bench.edits.add(HeadScale(0, 0, 3.0)))
    assert bench.result.metric > 0


@pytest.mark.parametrize("kind", ["head", "attn", "mlp", "resid", "atp"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_sweeps_on_top_of_interventions_match_the_engine_and_replay(engine, kind, direction):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.edits.add(HeadAblation(0, 1)))
    request = bench.sweeps.start(kind, direction, on_top=True)
    assert request.interventions == (HeadAblation(0, 1),) and request.direction == direction
    assert "on top of 1 intervention: zero L0.H1" in bench.sweeps.header(request)
    assert f"{kind} {direction}" in bench.sweeps.header(request)
    drive(bench, engine, request)
    expected = engine.inner.sweep(kind, IOI.clean, IOI.corrupted, request.metric, direction=direction,
                                  interventions=[HeadAblation(0, 1)])
    np.testing.assert_allclose(bench.sweeps.states[kind].result.values, expected.values, rtol=1e-5, atol=1e-6)
    sweep = work("sweep")[-1]
    assert sweep["interventions"] == [HeadAblation(0, 1).to_dict()] and sweep["direction"] == direction
    results = replay(Session.open("study"), engine.inner)
    assert results and all(step.matches for step in results)


def test_sweep_without_interventions_says_so(engine):
    bench = recorded_bench(engine)
    request = bench.sweeps.start("head", "noising", on_top=False)
    assert request.interventions == () and "unedited model" in bench.sweeps.header(request)


def test_pin_gives_no_metric_delta_against_another_metric(engine):
    """Another target, foil or read-out position is another quantity: no Δ against the pin."""
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    assert bench.pinned.pin()
    n = len(bench.result.tokens)
    drive(bench, engine, bench.set_metric_position(str(n - 1)))  # the last token, named by its index
    assert bench.pinned.deltas().metric == pytest.approx(0.0, abs=1e-6)
    drive(bench, engine, bench.set_metric_position("3"))
    assert bench.result.metric is not None and bench.pinned.deltas().metric is None
    drive(bench, engine, bench.set_metric_position("-1"))
    drive(bench, engine, bench.set_inputs(dataclasses.replace(IOI, target=" John", foil=" Mary")))
    assert bench.result.metric == pytest.approx(-bench.pinned.outcome.result.metric, abs=1e-4)
    assert bench.pinned.deltas().metric is None
    drive(bench, engine, bench.set_inputs(dataclasses.replace(IOI, clean=IOI.clean + " the")))
    deltas = bench.pinned.deltas()  # another prompt, both read at their last token
    assert not deltas.same_prompt and deltas.metric == pytest.approx(
        bench.result.metric - bench.pinned.outcome.result.metric)


def test_pinned_baseline_deltas(engine):
    bench = recorded_bench(engine)
    assert bench.pinned.pin() is False and "nothing to pin" in bench.error
    drive(bench, engine, bench.next_run())
    drive(bench, engine, bench.edits.add(HeadScale(0, 0, 3.0)))
    assert bench.pinned.pin()
    pinned = bench.result
    assert "PINNED (scale L0.H0" in bench.pinned.label()
    drive(bench, engine, bench.edits.add(HeadAblation(1, 1)))
    deltas = bench.pinned.deltas()
    assert deltas.metric == pytest.approx(bench.result.metric - pinned.metric)
    logits = pinned.logits.astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for change, token in zip(deltas.probs, bench.result.top, strict=True):
        assert change == pytest.approx(token.prob - probs[token.id], abs=1e-6)
    bench.error = "no sweep to export yet"  # an earlier error gives way to the unpin's own line
    bench.pinned.unpin()
    assert bench.pinned.outcome is None and bench.pinned.deltas() is None and bench.pinned.label() == ""
    assert bench.error is None and bench.info == "unpinned: Δ is against no interventions"


def test_reference_prompts_are_validated_sent_and_recorded(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.edits.add(HeadAblation(0, 1, mode="mean")))
    assert bench.set_reference_prompts("\n  \n") is None and "at least one" in bench.error
    request = bench.set_reference_prompts("The cat sat\n\nA dog ran home")
    assert request.prompts == ("The cat sat", "A dog ran home")
    drive(bench, engine, request)
    assert list(engine.inner.reference_prompts) == ["The cat sat", "A dog ran home"]
    expected = engine.inner.run(IOI.clean, [HeadAblation(0, 1, mode="mean")], metric=bench.metric())
    assert bench.result.metric == pytest.approx(expected.metric)
    kinds = [e["request"]["kind"] if e.kind == "request" else e.kind for e in events()]
    ref = kinds.index("reference_prompts")
    assert "run" in kinds[ref:]
    assert [e for e in events() if e.kind == "reference_prompts"][0]["prompts"] == ["The cat sat", "A dog ran home"]
    fresh = tiny_engine("llama").reference_prompts  # the defaults a new engine starts with
    engine.inner.set_reference_prompts(list(fresh))
    assert all(step.matches for step in replay(Session.open("study"), engine.inner))


def test_generation_settings_validated_and_used(engine):
    bench = recorded_bench(engine)
    assert "1..512" in bench.generations.set_settings("0", "0", "0")
    assert "finite" in bench.generations.set_settings("5", "nan", "0")
    assert "finite" in bench.generations.set_settings("5", "-1", "0")
    assert "seed" in bench.generations.set_settings("5", "0", "x")
    assert bench.generations.set_settings("5", "0.7", "42") is None
    request = bench.generations.start()
    assert (request.max_new_tokens, request.temperature, request.seed) == (5, 0.7, 42)
    drive(bench, engine, request)
    generated = work("generate")[-1]
    assert (generated["max_new_tokens"], generated["temperature"], generated["seed"]) == (5, 0.7, 42)
    assert all(step.matches for step in replay(Session.open("study"), engine.inner))


def test_steering_norm_beside_residual_norm(engine):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.vectors.request("v", 1, ("I love it",), ("I hate it",)))
    steer = SteeringVector(1, "v", 2.0)
    drive(bench, engine, bench.edits.add(steer))
    added, resid = bench.vectors.norm(steer)
    assert added == pytest.approx(2.0 * float(np.linalg.norm(engine.inner.vectors["v"])), rel=1e-5)
    assert resid == pytest.approx(float(np.median(bench.result.stats.resid_norm[0][1:])), rel=1e-6)
    assert f"|Δ| {added:.3g} vs median resid {resid:.3g} after pos 0" in bench.edits.list_label(bench.edits.stack.entries[-1])


def test_exports_hold_the_values_and_labels(engine, tmp_path):
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    drive(bench, engine, bench.sweeps.start("head", "denoising"))
    result = bench.sweeps.states["head"].result
    rows = list(csv.DictReader(io.StringIO(sweep_to_csv(result, direction="denoising"))))
    assert len(rows) == result.values.size
    row = rows[3]
    layer, head = divmod(3, result.values.shape[1])
    assert row["label"] == f"L{layer}.H{head}" and row["direction"] == "denoising"
    assert float(row["delta_metric"]) == pytest.approx(result.values[layer, head])
    path = tmp_path / "s.safetensors"
    sweep_to_safetensors(result, path, direction="denoising")
    np.testing.assert_array_equal(load_file(str(path))["values"], result.values.astype(np.float32))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError):  # an OSError, as the screen and the CLI catch (not SafetensorError)
        sweep_to_safetensors(result, tmp_path / "a-file" / "s.safetensors")
    attribution = bench.result.attribution
    parts = list(csv.DictReader(io.StringIO(attribution_to_csv(attribution))))
    total = [float(p["value"]) for p in parts if p["component"] == "total"][0]
    assert total == pytest.approx(attribution.total)
    assert sum(float(p["value"]) for p in parts if p["component"] != "total") == pytest.approx(total, abs=1e-4)
    assert [p for p in parts if p["component"] == "L1.H2"][0]["value"] == repr(float(attribution.heads[1, 2]))
    lens = bench.result.logit_lens
    lens_rows = list(csv.DictReader(io.StringIO(lens_to_csv(lens))))
    assert lens_rows[0]["token"] == lens.top_tokens[0][0]
    assert float(lens_rows[0]["prob"]) == pytest.approx(lens.top_probs[0, 0])


def test_export_sweep_cli(engine, tmp_path, capsys):
    from mechscope.cli import main

    bench = recorded_bench(engine)
    drive(bench, engine, bench.sweeps.start("resid", "noising"))
    out = tmp_path / "r.csv"
    assert main(["export-sweep", "study", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    values = bench.sweeps.states["resid"].result.values
    assert len(rows) == values.size and float(rows[-1]["delta_metric"]) == pytest.approx(values[-1, -1])
    st = tmp_path / "r.safetensors"
    assert main(["export-sweep", "study", "--format", "safetensors", "-o", str(st)]) == 0
    np.testing.assert_array_equal(load_file(str(st))["values"], values.astype(np.float32))
    assert main(["export-sweep", "nosuch"]) == 2
