"""Which features fire: the top features per token equal an independent numpy encode of the site's value
read by a plain hook, the error term is what the SAE leaves, and a changed SAE file is seen."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mechscope.backends.nnsight_engine import NNsightEngine
from mechscope.engine.features.formats import save_saelens
from mechscope.engine.features.quality import QUALITY_FILE, read_quality, save_quality
from mechscope.engine.features.results import SaeQuality
from mechscope.engine.features.sae import FeatureError
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_model, tiny_tokenizer
from mechscope.requests import execute, handler_for
from mechscope.requests.kinds import FeatureActivationsRequest
from mechscope.requests.tolerance import Tolerance
from mechscope.tui.widgets.features_view import features_text

from .saes import random_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"
LAYER = 1


def plain_resid_post(engine, prompt: str) -> np.ndarray:
    """[pos, d_model] leaving decoder layer LAYER, read with a forward hook written here."""
    seen = {}
    layer = engine.adapter.layers[LAYER]
    handle = layer.register_forward_hook(
        lambda m, args, out: seen.__setitem__("x", (out[0] if isinstance(out, tuple) else out).detach()))
    try:
        with torch.no_grad():
            engine.model(engine.passes.prompt_ids(prompt)[0])
    finally:
        handle.remove()
    return seen["x"][0].float().numpy()


def numpy_encode(sae, x: np.ndarray) -> np.ndarray:
    """ReLU SAE maths in numpy: relu((x - b_dec) @ W_enc + b_enc)."""
    w_enc, b_enc, b_dec = (t.numpy().astype(np.float64) for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    return np.maximum((x.astype(np.float64) - b_dec) @ w_enc + b_enc, 0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_top_features_equal_a_numpy_encode_of_the_site(family, tmp_path):
    engine = tiny_engine(family)
    d_model = engine.adapter.d_model
    sae = random_sae(f"L{LAYER}.resid_post", d_in=d_model, d_sae=48, seed=5)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    result = engine.feature_activations(PROMPT, folder, top_k=6)
    x = plain_resid_post(engine, PROMPT)  # [pos, d_model]
    acts = numpy_encode(sae, x)  # [pos, d_sae]
    expected_ids = np.argsort(-acts, axis=1, kind="stable")[:, :6]
    expected_values = np.take_along_axis(acts, expected_ids, axis=1)
    np.testing.assert_allclose(result.values, expected_values, atol=1e-4)
    fired = expected_values > 1e-4
    assert np.array_equal(np.where(fired, result.ids, -1), np.where(fired, expected_ids, -1))
    assert np.array_equal(result.l0, (acts > 0).sum(1))
    x_hat = acts @ sae.W_dec.numpy().astype(np.float64) + sae.b_dec.numpy()
    np.testing.assert_allclose(result.error_norm, np.linalg.norm(x - x_hat, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.site_norm, np.linalg.norm(x, axis=1), rtol=1e-5)
    assert result.sae_digest == sae.digest and len(result.tokens) == x.shape[0]


def test_a_changed_sae_file_is_read_again_and_replay_says_the_sae_changed(tmp_path):
    engine = tiny_engine("llama")
    folder = tmp_path / "sae"
    save_saelens(random_sae("L1.resid_post", seed=1), folder)
    request = FeatureActivationsRequest(PROMPT, str(folder), top_k=4)
    first = execute(engine, request)
    save_saelens(random_sae("L1.resid_post", seed=2), folder)
    second = execute(engine, request)
    assert first.ok and second.ok
    assert first.result.sae_digest != second.result.sae_digest
    handler = handler_for(request)
    problems = handler.compare(handler.summarise(first.result), handler.summarise(second.result),
                               Tolerance(1e-5, 1e-5, 0.0))
    assert problems and problems[0].startswith("the SAE changed: digest")
    assert handler.compare(handler.summarise(second.result), handler.summarise(second.result),
                           Tolerance(1e-5, 1e-5, 0.0)) == []


def test_bad_folders_and_sizes_are_one_line_errors(tmp_path):
    engine = tiny_engine("llama")
    missing = execute(engine, FeatureActivationsRequest(PROMPT, str(tmp_path / "nope")))
    assert missing.error is not None and "not a folder" in missing.error and "\n" not in missing.error
    wide = tmp_path / "wide"
    save_saelens(random_sae("L1.resid_post", d_in=48), wide)
    refused = execute(engine, FeatureActivationsRequest(PROMPT, str(wide)))
    assert "d_model is 32" in refused.error
    fine = str(save_saelens(random_sae("L1.resid_post"), tmp_path / "ok"))
    with pytest.raises(FeatureError, match="top_k must be in 1..1000"):
        engine.feature_activations(PROMPT, fine, top_k=0)


def test_the_nnsight_backend_refuses_features_by_capability(tmp_path):
    backend = NNsightEngine(tiny_model("llama"), tiny_tokenizer(), source="tiny-llama")
    outcome = execute(backend, FeatureActivationsRequest(PROMPT, str(tmp_path)))
    assert outcome.error == "NNsightEngine cannot read SAE features (capability 'features')"


def test_quality_figures_beside_the_sae_travel_with_the_features_and_name_their_sae(tmp_path):
    engine = tiny_engine("llama")
    folder = tmp_path / "sae"
    sae = random_sae("L1.resid_post", seed=1)
    save_saelens(sae, folder)
    request = FeatureActivationsRequest(PROMPT, str(folder), top_k=4)
    before = execute(engine, request).result
    assert before.quality is None
    assert "held-out quality not measured: `mechscope features eval" in features_text(before, str(folder)).plain
    figures = SaeQuality(tokens=4096, fve=0.8125, l0=31.5, dead_fraction=0.0125, ce_clean=3.0, ce_sae=3.25,
                         ce_zero=9.0, ce_recovered=float("nan"), kl=0.125, corpus="held-out text",
                         fve_typical=0.75, massive_tokens=3)
    save_quality(figures, folder, before.sae_digest)
    back = read_quality(folder, before.sae_digest)
    assert back is not None and back.fve == 0.8125 and math.isnan(back.ce_recovered) and back.corpus == "held-out text"
    assert read_quality(folder, "another digest") is None  # figures of another SAE are not shown
    outcome = execute(engine, request)
    assert outcome.result.quality.fve == 0.8125 and outcome.result.quality.tokens == 4096
    handler = handler_for(request)
    summary = handler.summarise(outcome.result)
    handler.check(request, summary)
    restored = handler.restore(request, summary)
    assert restored.quality.l0 == 31.5 and restored.quality.kl == 0.125
    assert "held-out quality: FVE 0.812 (0.750 without 3 massive) · L0 31.5 · dead 1.2%" in features_text(restored, str(folder)).plain
    problems = handler.compare(handler.summarise(before), summary, Tolerance(1e-5, 1e-5, 0.0))
    assert problems == ["the quality figures beside the SAE (quality.json) changed"]
    (folder / QUALITY_FILE).write_text(json.dumps({"sae_digest": before.sae_digest, "tokens": "many"}))
    assert read_quality(folder, before.sae_digest) is None
