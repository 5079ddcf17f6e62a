"""Feature edits keep the error term: checked against the plain HF model with hooks written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine.core import Engine
from mechscope.engine.errors import InterventionError
from mechscope.engine.features.sae import FeatureError
from mechscope.engine.interventions import FeatureAblation, FeatureClamp, FeatureSteer
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_model, tiny_tokenizer
from mechscope.engine.views import Views

from .saes import random_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"
METRIC = Metric("logit_diff", target=" Mary", foil=" John")
TOL = 1e-6

# Where each site is on the plain HF modules: (module path under the layer, reads its input).
PATHS = {
    "llama": {"resid_pre": ("", True), "resid_post": ("", False), "attn_out": ("self_attn", False),
              "mlp_out": ("mlp", False), "layers": "model.layers"},
    "gpt2": {"resid_pre": ("", True), "resid_post": ("", False), "attn_out": ("attn", False),
             "mlp_out": ("mlp", False), "layers": "transformer.h"},
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def plain(family):
    return tiny_model(family, seed=3)


@pytest.fixture(scope="module")
def engine(family):
    return Engine(tiny_model(family, seed=3), tiny_tokenizer(), source=f"tiny-{family}")


def _ids() -> torch.Tensor:
    return tiny_tokenizer()(PROMPT, return_tensors="pt").input_ids


def _hand_logits(plain, family: str, site: str, edit) -> torch.Tensor:
    """Last-position logits of the plain model with `edit(x [batch, pos, d]) -> x'` hooked at `site`."""
    layer_text, kind = site.split(".")
    layer = plain.get_submodule(PATHS[family]["layers"])[int(layer_text[1:])]
    path, reads_input = PATHS[family][kind]
    module = layer.get_submodule(path) if path else layer
    if reads_input:
        def pre(mod, args, kwargs):
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, output):
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        handle = module.register_forward_hook(post)
    try:
        with torch.no_grad():
            return plain(_ids()).logits[0, -1].float()
    finally:
        handle.remove()


def _acts_by_hand(sae, x: torch.Tensor) -> torch.Tensor:
    """ReLU SAE encoding written out again (float64)."""
    x = x.double() - sae.b_dec.double()
    return torch.relu(x @ sae.W_enc.double() + sae.b_enc.double())


SITES = ["L1.resid_pre", "L1.resid_post", "L2.attn_out", "L0.mlp_out"]


def test_attached_sae_without_edits_changes_no_view(engine, plain, family):
    views = Views(logit_lens=True, attribution=True, stats=True, attention=("L1.H2",), logprobs=True)
    before = engine.run(PROMPT, metric=METRIC, views=views)
    for i, site in enumerate(SITES):
        engine.attach_sae(f"s{i}", random_sae(site, seed=i))
    disabled = [FeatureAblation(SITES[0], "s0", 3, enabled=False)]
    after = engine.run(PROMPT, disabled, metric=METRIC, views=views)
    assert torch.allclose(torch.from_numpy(after.prediction.logits), torch.from_numpy(before.prediction.logits),
                          atol=TOL, rtol=0)
    assert after.metric == pytest.approx(before.metric, abs=TOL)
    np.testing.assert_allclose(after.token_logprobs, before.token_logprobs, atol=TOL, rtol=0)
    np.testing.assert_allclose(after.attention["L1.H2"], before.attention["L1.H2"], atol=TOL, rtol=0)
    np.testing.assert_allclose(after.stats.resid_norm, before.stats.resid_norm, atol=TOL, rtol=0)
    hand = _hand_logits(plain, family, SITES[0], lambda x: x)
    assert torch.allclose(torch.from_numpy(after.prediction.logits), hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", SITES)
def test_clamping_a_feature_to_its_own_activation_is_the_identity(engine, family, site):
    sae = engine.attach_sae("own", random_sae(site, seed=11))
    site_value = _site_value(engine, site)
    acts = sae.encode(site_value)[0]  # [pos, d_sae]
    position, feature = 5, int(acts[5].argmax())
    clean = engine.run(PROMPT, metric=METRIC)
    clamped = engine.run(PROMPT, [FeatureClamp(site, "own", feature, float(acts[position, feature]),
                                               positions=[position])], metric=METRIC)
    # Recomputing the layers above the edit reorders float32 sums (~1e-7 of the logits); an edit that
    # adds exactly nothing takes that same path, so the identity itself is checked against it.
    unchanged = engine.run(PROMPT, [FeatureSteer(site, "own", feature, 0.0, positions=[position])], metric=METRIC)
    assert clamped.compute.mode == unchanged.compute.mode != "cached"
    assert torch.allclose(torch.from_numpy(clamped.prediction.logits),
                          torch.from_numpy(unchanged.prediction.logits), atol=TOL, rtol=0)
    assert torch.allclose(torch.from_numpy(clamped.prediction.logits), torch.from_numpy(clean.prediction.logits),
                          atol=1e-5, rtol=0)


def _site_value(engine: Engine, site: str) -> torch.Tensor:
    """The clean value at `site` [1, pos, d_model], read with an observing hook of the engine's own."""
    from mechscope.engine.features.reading import site_values

    return site_values(engine.passes, _ids(), site)


@pytest.mark.parametrize("site", SITES)
def test_ablating_a_feature_subtracts_its_activation_times_its_decoder_row(engine, plain, family, site):
    sae = engine.attach_sae("abl", random_sae(site, seed=5))
    positions = [3, 7, -1]

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        acts = _acts_by_hand(sae, x)  # [batch, pos, d_sae]
        feature = _ablated_feature(acts)
        out = x.clone()
        for p in positions:
            out[:, p] -= (acts[:, p, feature, None] * sae.W_dec[feature].double()).to(x.dtype)
        return out

    feature = _ablated_feature(_acts_by_hand(sae, _site_value(engine, site)))
    result = engine.run(PROMPT, [FeatureAblation(site, "abl", feature, positions=positions)], metric=METRIC)
    hand = _hand_logits(plain, family, site, by_hand)
    assert not torch.allclose(hand, _hand_logits(plain, family, site, lambda x: x), atol=1e-3)
    assert torch.allclose(torch.from_numpy(result.prediction.logits), hand, atol=1e-5, rtol=0)


def _ablated_feature(acts: torch.Tensor) -> int:
    """The feature most active at position 3 (so the ablation changes something)."""
    return int(acts[0, 3].argmax())


def test_several_edits_on_one_sae_read_the_same_activations(engine, plain, family):
    site = "L1.resid_post"
    sae = engine.attach_sae("multi", random_sae(site, seed=8))
    acts = _acts_by_hand(sae, _site_value(engine, site))[0]
    f1, f2 = int(acts[4].argmax()), int(acts[6].argmax())
    stack = [FeatureAblation(site, "multi", f1), FeatureSteer(site, "multi", f2, 2.5, positions=[6]),
             FeatureClamp(site, "multi", f2, 1.25, positions=[2])]

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        a = _acts_by_hand(sae, x)  # [batch, pos, d_sae]
        out = x.double() - a[..., f1, None] * sae.W_dec[f1].double()
        out[:, 6] += 2.5 * sae.W_dec[f2].double()
        out[:, 2] += (1.25 - a[:, 2, f2, None]) * sae.W_dec[f2].double()
        return out.to(x.dtype)

    result = engine.run(PROMPT, stack, metric=METRIC)
    assert torch.allclose(torch.from_numpy(result.prediction.logits), _hand_logits(plain, family, site, by_hand),
                          atol=1e-5, rtol=0)


def test_feature_edits_in_generation_and_attribution_adds_up(engine):
    site = "L1.resid_pre"
    engine.attach_sae("gen", random_sae(site, seed=9))
    steer = FeatureSteer(site, "gen", 4, 6.0)
    plain_tokens = [t.id for t in engine.generate(PROMPT, max_new_tokens=4)]
    steered = [t.id for t in engine.generate(PROMPT, [steer], max_new_tokens=4)]
    assert steered != plain_tokens
    result = engine.run(PROMPT, [steer], metric=METRIC, views=Views(attribution=True))
    if not engine.adapter.post_ln:
        assert abs(result.attribution.parts_sum() - result.attribution.total) < 1e-4


def test_misfit_feature_edits_are_refused_in_one_line(engine):
    engine.attach_sae("fit", random_sae("L1.mlp_out", seed=2))
    cases = [
        (FeatureAblation("L1.mlp_out", "missing", 0), "no SAE named 'missing'"),
        (FeatureAblation("L2.mlp_out", "fit", 0), "reads L1.mlp_out, not L2.mlp_out"),
        (FeatureClamp("L1.mlp_out", "fit", 64, 1.0), "feature 64 is out of range 0..63"),
        (FeatureSteer("L1.mlp_out", "fit", 1, 1.0, positions=[99]), "position 99 is outside"),
    ]
    for iv, needle in cases:
        with pytest.raises(InterventionError, match=needle) as exc:
            engine.validate([iv], PROMPT)
        assert "\n" not in str(exc.value) and str(exc.value).startswith(iv.label)
    with pytest.raises(FeatureError, match="width 16"):
        engine.attach_sae("narrow", random_sae("L1.mlp_out", d_in=16))
    with pytest.raises(FeatureError, match="layers 0..2"):
        engine.attach_sae("deep", random_sae("L7.mlp_out"))
    with pytest.raises(ValueError, match="site 'L1.hidden'"):
        FeatureAblation("L1.hidden", "fit", 0)


def test_an_edit_naming_an_sae_folder_equals_attaching_that_sae_by_name(engine, tmp_path):
    from mechscope.engine.features.formats import save_saelens

    site = "L1.resid_post"
    sae = random_sae(site, seed=12)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    engine.attach_sae("named", sae)
    acts = _acts_by_hand(sae, _site_value(engine, site))[0]  # [pos, d_sae]
    feature = int(acts[4].argmax())
    stacks = {
        name: [FeatureAblation(site, name, feature, positions=[4]), FeatureClamp(site, name, feature, 2.0, positions=[2]),
               FeatureSteer(site, name, feature + 1, 1.5)]
        for name in ("named", folder)}
    by_name = engine.run(PROMPT, stacks["named"], metric=METRIC)
    by_folder = engine.run(PROMPT, stacks[folder], metric=METRIC)
    clean = engine.run(PROMPT, metric=METRIC)
    assert by_folder.metric != pytest.approx(clean.metric, abs=1e-4)
    assert by_folder.metric == pytest.approx(by_name.metric, abs=1e-6)
    np.testing.assert_allclose(by_folder.prediction.logits, by_name.prediction.logits, atol=1e-6, rtol=0)
    assert stacks[folder][0].label == f"ablate {site} sae#{feature}"  # the folder by its last part


def test_a_wrong_sae_folder_is_refused_in_one_line(engine, tmp_path):
    from mechscope.engine.features.formats import save_saelens

    folder = str(save_saelens(random_sae("L1.resid_post", seed=1), tmp_path / "sae"))
    cases = [(FeatureAblation("L1.resid_post", str(tmp_path / "nowhere"), 0), "not a folder"),
             (FeatureAblation("L2.mlp_out", folder, 0), "L2.mlp_out"),
             (FeatureAblation("L1.resid_post", folder, 64), "feature 64 is out of range 0..63")]
    for iv, needle in cases:
        with pytest.raises(InterventionError, match=needle) as exc:
            engine.validate([iv], PROMPT)
        assert "\n" not in str(exc.value) and str(exc.value).startswith(iv.label)
