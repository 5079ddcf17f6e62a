"""A batched prompt set equals its rows run one at a time, on every family, rows of different lengths."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mechscope.engine import HeadAblation, HeadScale, Metric, set_runs
from mechscope.engine.interventions import ComponentAblation
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.set_batches import MAX_BATCH_ROWS
from mechscope.engine.set_runs import paired_batches, run_set, shared_prefixes, sweep_set
from mechscope.engine.testing import FAMILIES, tiny_engine

ROWS = PromptSet("mixed", (
    PromptRow("When Mary and John went to the store, John gave a drink to",
              "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    PromptRow("The capital of France is", "The capital of Eiffel is", " Paris", " the"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
              "Alice and Bob walked to the park, and Alice handed a book to", " Alice", " Bob"),
    PromptRow("One two three", "One two four", " four", " five"),
))


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    return tiny_engine(request.param)


def test_rows_have_different_lengths(engine):
    lengths = {len(engine.tokenize(row.clean)[0]) for row in ROWS.rows}
    assert len(lengths) >= 3


@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_run_equals_rows_one_at_a_time(engine, padding):
    edits = [HeadAblation(1, 2, "zero"), HeadScale(0, 1, 3.0, positions=(0, -1)),
             ComponentAblation(2, "mlp", "zero"), HeadAblation(2, 0, "resample")]
    result = run_set(engine, ROWS, interventions=edits, padding=padding)
    for r, row in enumerate(ROWS.rows):
        metric = Metric("logit_diff", row.target, row.foil)
        base = engine.run(row.clean, metric=metric).prediction.metric
        edited = engine.run(row.clean, edits, metric=metric, corrupted=row.corrupted).prediction.metric
        assert result.baseline[r] == pytest.approx(base, abs=1e-5)
        assert result.values[r] == pytest.approx(edited, abs=1e-5)
    assert result.mean == pytest.approx(float(np.mean(result.values)))


@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_head_sweep_equals_rows_one_at_a_time(engine, padding):
    result = sweep_set(engine, ROWS, padding=padding, max_batch=5)
    assert result.per_row.shape == (len(ROWS), engine.adapter.n_layers, engine.adapter.n_heads)
    for r, row in enumerate(ROWS.rows):
        single = engine.sweep("head", row.clean, row.corrupted, Metric("logit_diff", row.target, row.foil))
        np.testing.assert_allclose(result.per_row[r], single.values, atol=1e-5)
        assert result.base_metric[r] == pytest.approx(single.base_metric, abs=1e-5)
        assert result.source_metric[r] == pytest.approx(single.source_metric, abs=1e-5)
    np.testing.assert_allclose(result.mean, result.per_row.mean(0))
    np.testing.assert_allclose(result.std, result.per_row.std(0))


def test_set_sweep_computes_only_the_positions_after_each_rows_shared_prefix(engine):
    """Variants run from the first token where a row's prompts differ (left padding: the padding is
    before it); only the three set-wide passes (source head outputs, source, base) see every position."""
    base, source = paired_batches(engine, ROWS, "noising", "left")
    starts = shared_prefixes(base, source)
    # every row's prompts share their first tokens, and differ before the readout
    assert all(offset < start < readout for offset, start, readout in zip(base.offsets, starts, base.readout.tolist()))
    widths: list[int] = []

    def record(module, args, kwargs):
        widths.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    handle = engine.adapter.layers[-1].register_forward_pre_hook(record, with_kwargs=True)
    try:
        sweep_set(engine, ROWS, max_batch=5)
    finally:
        handle.remove()
    full = base.ids.shape[1]
    assert sorted(widths)[-3:] == [full] * 3
    assert max(sorted(widths)[:-3]) <= full - min(starts)


def test_prob_and_loss_metrics_match_single_rows(engine):
    for kind in ("prob", "loss"):
        result = run_set(engine, ROWS, kind=kind)
        for r, row in enumerate(ROWS.rows):
            single = engine.run(row.clean, metric=Metric(kind, row.target)).prediction.metric
            assert result.values[r] == pytest.approx(single, abs=1e-5, rel=1e-5)


def test_mean_ablation_sweep_equals_run_set_with_each_head_mean_ablated(engine):
    sweep = sweep_set(engine, ROWS, source="mean", max_batch=7)
    a = engine.adapter
    for layer in range(a.n_layers):
        for head in range(a.n_heads):
            run = run_set(engine, ROWS, interventions=[HeadAblation(layer, head, "mean")])
            np.testing.assert_allclose(sweep.per_row[:, layer, head], run.effect, atol=1e-5)


def test_sweep_reports_progress_and_stops_when_asked():
    from mechscope.engine.errors import Cancelled

    engine = tiny_engine("llama")
    seen = []
    result = sweep_set(engine, ROWS, on_progress=lambda partial: seen.append(partial.complete))
    assert result.complete and seen == [False] * engine.adapter.n_layers
    with pytest.raises(Cancelled):
        sweep_set(engine, ROWS, should_stop=lambda: True)


def test_set_errors_name_the_row():
    from mechscope.engine.errors import InterventionError, PromptError
    from mechscope.engine.interventions import ActivationPatch, AttentionKnockout

    engine = tiny_engine("llama")
    uneven = PromptSet("uneven", (ROWS.rows[0], PromptRow("The capital of France is", "The capital of Paris is",
                                                          " Paris", " the")))
    with pytest.raises(PromptError, match="row 2: clean and corrupted prompts must have the same number"):
        sweep_set(engine, uneven)
    with pytest.raises(PromptError, match="row 1: logit_diff needs a foil"):
        run_set(engine, PromptSet("x", (PromptRow("One two", target=" three"),)))
    for refused in (AttentionKnockout(0, 1, 2, 1), ActivationPatch("L0.attn", "One two three")):
        with pytest.raises(InterventionError, match=f"{refused.kind} is not supported over a prompt set"):
            run_set(engine, ROWS, interventions=[refused])


def test_a_sweep_pass_on_a_cpu_stays_within_its_token_budget():
    engine = tiny_engine("llama")
    assert set_runs.sweep_pass_variants(engine, suffix=10, prefix=40) == set_runs.CPU_BATCH_TOKENS // 10
    assert set_runs.sweep_pass_variants(engine, suffix=1, prefix=40) == MAX_BATCH_ROWS
    assert set_runs.sweep_pass_variants(engine, suffix=10, prefix=40, max_batch=5) == 5
    assert set_runs.sweep_pass_variants(engine, suffix=10_000, prefix=0) == 1


def test_a_sweep_pass_on_an_accelerator_fills_it_within_a_share_of_its_free_memory(monkeypatch):
    engine = tiny_engine("llama")
    on_gpu = SimpleNamespace(device=torch.device("cuda"), adapter=engine.adapter, dtype=torch.bfloat16)
    per_variant = set_runs.pass_variant_bytes(engine.adapter, 18, 34, 2)
    assert per_variant > set_runs.pass_variant_bytes(engine.adapter, 18, 10, 2)  # a longer prefix holds more keys
    monkeypatch.setattr(set_runs, "free_device_bytes", lambda device: 1 << 40)  # plenty: tokens bound it
    assert set_runs.sweep_pass_variants(on_gpu, 18, 34) == set_runs.ACCELERATOR_BATCH_TOKENS // 18 > MAX_BATCH_ROWS
    monkeypatch.setattr(set_runs, "free_device_bytes", lambda device: 40 * per_variant)
    assert set_runs.sweep_pass_variants(on_gpu, 18, 34) == 10  # a quarter of the free memory
    assert set_runs.sweep_pass_variants(on_gpu, 18, 34, max_batch=3) == 3
    monkeypatch.setattr(set_runs, "free_device_bytes", lambda device: 0)
    assert set_runs.sweep_pass_variants(on_gpu, 18, 34) == 1  # still makes progress, one variant a pass


def test_passes_end_where_their_padding_would_cost_more_than_another_pass():
    starts = [3, 3, 4, 4, 9, 9, 10, 10]
    unlimited = lambda first: 100  # noqa: E731
    assert set_runs.plan_passes(starts, unlimited, None) == [(0, 8)]  # a CPU: capacity alone cuts
    assert set_runs.plan_passes(starts, lambda first: 3, None) == [(0, 3), (3, 6), (6, 8)]
    # padding of the first pass: 0, 1, 1, then 6 more at the fifth variant: past 5, so it starts a pass
    assert set_runs.plan_passes(starts, unlimited, 5) == [(0, 4), (4, 8)]
    assert set_runs.plan_passes(starts, unlimited, 0) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert set_runs.plan_passes([], unlimited, 0) == []


@pytest.mark.parametrize("overhead_tokens", [0, 7])
def test_a_sweep_cut_into_passes_by_padding_equals_one_cut_by_capacity(engine, monkeypatch, overhead_tokens):
    by_capacity = sweep_set(engine, ROWS).per_row
    monkeypatch.setattr(set_runs, "pass_overhead_tokens", lambda engine: overhead_tokens)
    np.testing.assert_allclose(sweep_set(engine, ROWS).per_row, by_capacity, atol=1e-5)
