"""The IOI circuit on the demo model (SmolLM2-135M-Instruct): prediction, sinks, AtP vs patching, ablation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from mechscope.engine import HeadAblation, Metric, Views
from mechscope.engine.hooks import count_hooks

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI = Metric("logit_diff", target=" Mary", foil=" John")
SIZEABLE = 0.05  # logits: ~1% of the clean logit difference (about 6.1)

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def sweeps(demo_engine):
    """The head-patching sweep and AtP on the IOI pair (noising), computed once for the module."""
    head = demo_engine.sweep("head", CLEAN, CORRUPT, IOI)
    atp = demo_engine.sweep("atp", CLEAN, CORRUPT, IOI)
    print(f"\nhead sweep {head.seconds:.2f}s, AtP {atp.seconds:.2f}s")
    return head, atp


def test_ioi_prompt_predicts_the_indirect_object(demo_engine):
    result = demo_engine.run(CLEAN, metric=IOI)
    print(f"\ntop: {[(t.text, round(t.prob, 3)) for t in result.top[:3]]}; logit diff {result.metric:.3f}")
    assert result.top[0].text == " Mary"
    assert result.metric > 2.0
    corrupted = demo_engine.run(CORRUPT, metric=IOI)
    print(f"corrupted top: {corrupted.top[0].text!r}; logit diff {corrupted.metric:.3f}")
    assert corrupted.metric < 0  # the other name swaps the answer


def test_middle_layers_sink_on_the_first_token(demo_engine):
    scores = demo_engine.run(CLEAN, views=Views(sinks=True)).sink_scores  # [layer, head]
    n_layers = scores.shape[0]
    thirds = [scores[: n_layers // 3], scores[n_layers // 3: 2 * n_layers // 3], scores[2 * n_layers // 3:]]
    medians = [float(np.median(part)) for part in thirds]
    print(f"\nsink score medians (early, middle, late thirds): {[round(m, 3) for m in medians]}")
    print(f"per-layer medians: {np.round(np.median(scores, axis=1), 2).tolist()}")
    # attending uniformly over the causal window would give mean(1/(q+1)) over queries q >= 1
    n_pos = len(demo_engine.tokenize(CLEAN)[0])
    uniform = float(np.mean([1 / (q + 1) for q in range(1, n_pos)]))
    print(f"uniform-attention baseline {uniform:.3f}")
    assert medians[1] > 0.5 > 2 * uniform
    assert np.all((scores >= 0) & (scores <= 1))


def _spearman_and_pearson(head, atp) -> tuple[float, float, float, int]:
    true, approx = head.values.ravel(), atp.values.ravel()
    sizeable = np.abs(true) > SIZEABLE
    return (float(spearmanr(true, approx).statistic), float(pearsonr(true, approx).statistic),
            float(spearmanr(true[sizeable], approx[sizeable]).statistic), int(sizeable.sum()))


def test_atp_ranks_heads_like_true_patching(sweeps):
    head, atp = sweeps
    assert head.values.shape == atp.values.shape == (30, 9)
    rho_all, pearson, rho_sizeable, n_sizeable = _spearman_and_pearson(head, atp)
    top_patch = set(np.argsort(head.values, axis=None)[:10].tolist())
    overlap = len(top_patch & set(np.argsort(atp.values, axis=None)[:10].tolist()))
    print(f"\nAtP vs head patching: Spearman {rho_all:.3f} over all 270 heads, {rho_sizeable:.3f} over "
          f"the {n_sizeable} heads with |effect| > {SIZEABLE}; Pearson {pearson:.3f}; "
          f"top-10 overlap {overlap}/10")
    print(f"base logit diff {head.base_metric:.3f}, corrupted {head.source_metric:.3f}")
    assert rho_sizeable > 0.7
    assert pearson > 0.9
    assert overlap >= 5
    # the strongest head is found by both
    assert np.argmin(head.values) == np.argmin(atp.values)


@pytest.mark.xfail(strict=True, reason=(
    "first-order AtP misses L20.H0, L17.H4 and L19.H2 (true patching -1.9, -1.0, -1.3; AtP about 0): "
    "each acts by moving the name movers' attention from one name to the other (patching L20.H0 alone "
    "takes L23.H0's attention on ' Mary' from 0.69 to 0.38 and L24.H4's from 0.81 to 0.31), a change "
    "too large for a gradient taken at the clean run; the ranks of the ~200 near-zero heads are noise"))
def test_atp_spearman_over_every_head_is_above_0_7(sweeps):
    head, atp = sweeps
    assert _spearman_and_pearson(head, atp)[0] > 0.7


def test_ablating_the_top_patching_heads_more_than_halves_the_logit_difference(demo_engine, sweeps):
    head, _ = sweeps
    n_heads = head.values.shape[1]
    order = np.argsort(head.values, axis=None)  # most negative effect first
    clean = demo_engine.run(CLEAN, metric=IOI).metric
    figures = {}
    for k in (3, 4, 5, 6):
        heads = [(int(i // n_heads), int(i % n_heads)) for i in order[:k]]
        ablated = demo_engine.run(CLEAN, [HeadAblation(layer, h) for layer, h in heads], metric=IOI).metric
        figures[k] = (heads, ablated)
        print(f"\nzero-ablating {k} heads {[f'L{layer}.H{h}' for layer, h in heads]} "
              f"(patching effects {[round(float(head.values[layer, h]), 2) for layer, h in heads]}): "
              f"logit diff {clean:.3f} -> {ablated:.3f} ({ablated / clean:.0%})")
    assert all(ablated < clean / 2 for _, ablated in figures.values())
    assert count_hooks(demo_engine.model) == 0
