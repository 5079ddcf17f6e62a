"""Normalised effects and ABC mean ablation on the demo model, with numbers a researcher can check."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine import Metric
from mechscope.engine.interventions import ActivationPatch, HeadAblation
from mechscope.engine.prompt_sets import template_set

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI = Metric("logit_diff", target=" Mary", foil=" John")
NAME_MOVER = (23, 3)  # the strongest head of the IOI denoising sweep on this model

pytestmark = pytest.mark.demo


def test_denoising_l23h3_recovers_a_share_of_the_gap_in_the_sweep_and_in_a_single_patch(demo_engine):
    sweep = demo_engine.sweep("head", CLEAN, CORRUPT, IOI, direction="denoising")
    layer, head = NAME_MOVER
    share = float(sweep.normalised[layer, head])
    run = demo_engine.run(CORRUPT, [ActivationPatch(f"L{layer}.H{head}", CLEAN)], metric=IOI, corrupted=CLEAN)
    by_hand = (run.metric - run.baseline.metric) / (run.source_metric - run.baseline.metric)
    print(f"\nL23.H3 denoising: Δ {sweep.values[layer, head]:+.3f}, {share:+.3f} of the gap "
          f"(corrupted {sweep.base_metric:+.3f} → clean {sweep.source_metric:+.3f}); single patch {by_hand:+.3f}")
    assert share == pytest.approx(by_hand, abs=1e-3)
    assert share > 0.3  # one head brings back a large share of the answer


def test_abc_mean_ablation_of_the_name_mover_lowers_the_logit_difference(demo_engine):
    pset = template_set("ioi", demo_engine.tokenizer, 20, 0)
    ablate = (HeadAblation(*NAME_MOVER, "mean"),)
    abc = demo_engine.run_set(pset, "logit_diff", ablate, means="corrupted")
    own = demo_engine.run_set(pset, "logit_diff", ablate, means="clean")
    print(f"\nioi 20, mean-ablate L23.H3: baseline {abc.baseline.mean():+.3f}; "
          f"ABC means {abc.values.mean():+.3f} (Δ {np.mean(abc.effect):+.3f}); "
          f"clean-set means {own.values.mean():+.3f} (Δ {np.mean(own.effect):+.3f})")
    assert np.mean(abc.effect) < 0
