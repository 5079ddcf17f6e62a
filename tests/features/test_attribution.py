"""Attribution to features: estimates equal a by-hand torch gradient, the nodes add up to -(x . grad),
exact values equal runs with FeatureAblation, the direct effect equals the frozen-norm maths by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mechscope.backends.nnsight_engine import NNsightEngine
from mechscope.engine.features.formats import save_saelens
from mechscope.engine.features.reading import logits_with_site
from mechscope.engine.features.sae import FeatureError
from mechscope.engine.interventions import FeatureAblation, HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_engine, tiny_model, tiny_tokenizer
from mechscope.requests import execute, handler_for
from mechscope.requests.kinds import FeatureAttributionRequest
from mechscope.requests.tolerance import Tolerance

from .saes import random_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")
LAYER = 1


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def by_hand(engine, sae, metric_of) -> tuple[torch.Tensor, torch.Tensor]:
    """The site's value x and d metric / dx ([pos, d_model] each) with plain torch hooks written here:
    the value leaving (resid_post) or entering (resid_pre) decoder layer LAYER made a leaf."""
    ids = engine.passes.prompt_ids(PROMPT)[0]
    layer = engine.adapter.layers[LAYER]
    leaf = {}

    def post(module, args, output):
        leaf["x"] = _first(output).detach().requires_grad_(True)
        return (leaf["x"], *output[1:]) if isinstance(output, tuple) else leaf["x"]

    def pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        leaf["x"] = hidden.detach().requires_grad_(True)
        return ((leaf["x"], *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": leaf["x"]})

    handle = (layer.register_forward_hook(post) if sae.site_kind == "resid_post"
              else layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.enable_grad():
            logits = engine.model(ids).logits[0, -1].float()  # [vocab]
            (grad,) = torch.autograd.grad(metric_of(logits), [leaf["x"]])
    finally:
        handle.remove()
    return leaf["x"].detach()[0].double(), grad[0].double()


def logit_diff_of(engine):
    mary, john = (engine.tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    return lambda logits: logits[mary] - logits[john]


def assert_exact_equals_ablations(engine, sae, result, metric, plain: float, n: int) -> None:
    """The first `n` candidates' exact values equal runs with that feature ablated at its token."""
    for k in range(n):
        ablation = FeatureAblation(sae.site, "sae", int(result.features[k]), positions=[int(result.positions[k])])
        run = engine.run(PROMPT, [ablation], metric=metric).prediction.metric
        assert result.exact[k] == pytest.approx(run - plain, abs=1e-5)


@pytest.mark.parametrize(("family", "kind"), [("llama", "resid_post"), ("gpt2", "resid_post"),
                                              ("gemma2", "resid_pre"), ("qwen2", "resid_pre")])
def test_estimates_equal_a_by_hand_gradient_and_the_nodes_add_up(family, kind, tmp_path):
    """Identity tested per position p: sum_i est[p, i] + error[p] + b_dec node[p] = -(x[p] . g[p]),
    since x = sum_i a_i W_dec[i] + b_dec + e."""
    engine = tiny_engine(family)
    sae = random_sae(f"L{LAYER}.{kind}", d_in=engine.adapter.d_model, d_sae=48, seed=4)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    result = engine.feature_attribution(PROMPT, folder, None, METRIC, top_n=1000, verify=0, include_first=True)
    x, g = by_hand(engine, sae, logit_diff_of(engine))  # [pos, d] float64
    w_enc, b_enc, w_dec, b_dec = (t.double() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    acts = torch.relu((x - b_dec) @ w_enc + b_enc)  # [pos, d_sae]
    expected = -acts * (g @ w_dec.T)  # [pos, d_sae]
    assert result.n_active == int((acts > 0).sum()) == len(result.features)
    np.testing.assert_allclose(result.estimates, expected[result.positions, result.features].numpy(),
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(np.abs(result.estimates)) <= 0)  # ranked by |estimate|
    error = x - (acts @ w_dec + b_dec)
    np.testing.assert_allclose(result.error_estimates, (-(error * g).sum(-1)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.bias_estimates, (-(b_dec * g).sum(-1)).numpy(), rtol=1e-4, atol=1e-5)
    listed = np.zeros(len(result.tokens))
    np.add.at(listed, result.positions, result.estimates.astype(np.float64))
    np.testing.assert_allclose(result.feature_totals, listed, rtol=1e-4, atol=1e-5)
    total = result.feature_totals + result.error_estimates + result.bias_estimates
    np.testing.assert_allclose(total, (-(x * g).sum(-1)).numpy(), rtol=1e-4, atol=1e-5)
    assert np.isnan(result.exact).all() and np.isnan(result.error_exact)


@pytest.mark.parametrize(("family", "kind"), [("llama", "resid_post"), ("llama", "mlp_out"),
                                              ("gpt2", "attn_out"), ("opt", "mlp_out"), ("gemma3", "resid_pre")])
def test_exact_values_equal_runs_with_feature_ablation(family, kind, tmp_path):
    engine = tiny_engine(family)
    sae = random_sae(f"L{LAYER}.{kind}", d_in=engine.adapter.d_model, d_sae=48, seed=6)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    result = engine.feature_attribution(PROMPT, folder, None, METRIC, top_n=12, verify=6)
    engine.attach_sae("sae", sae)
    plain = engine.run(PROMPT, metric=METRIC).prediction.metric
    assert result.base_metric == pytest.approx(plain, abs=1e-5)
    assert result.verified == 6 and np.isnan(result.exact[6:]).all()
    assert (result.positions > 0).all() and not result.include_first  # the attention sink is left out
    assert_exact_equals_ablations(engine, sae, result, METRIC, plain, 6)
    with torch.no_grad():  # the error node removed: the site's value replaced by its reconstruction
        logits = logits_with_site(engine.passes, engine.passes.prompt_ids(PROMPT)[0], sae.site,
                                  lambda x: sae.decode(sae.encode(x)).to(x.dtype))[0, -1]
    assert result.error_exact == pytest.approx(float(logit_diff_of(engine)(logits)) - plain, abs=1e-5)


def test_with_interventions_every_run_is_on_the_edited_model(tmp_path):
    engine = tiny_engine("llama")
    sae = random_sae("L1.resid_post", d_in=engine.adapter.d_model, seed=2)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    edits = (HeadAblation(0, 1), HeadAblation(2, 3, "resample"))
    result = engine.feature_attribution(PROMPT, folder, None, METRIC, edits, top_n=6, verify=4, corrupted=CORRUPT)
    base = engine.run(PROMPT, edits, metric=METRIC, corrupted=CORRUPT).prediction.metric
    assert result.base_metric == pytest.approx(base, abs=1e-5)
    assert result.base_metric != pytest.approx(engine.run(PROMPT, metric=METRIC).prediction.metric, abs=1e-3)
    engine.attach_sae("sae", sae)
    for n in range(4):
        ablation = FeatureAblation(sae.site, "sae", int(result.features[n]), positions=[int(result.positions[n])])
        run = engine.run(PROMPT, (*edits, ablation), metric=METRIC, corrupted=CORRUPT).prediction.metric
        assert result.exact[n] == pytest.approx(run - base, abs=1e-5)


def test_the_base_metric_equals_the_plain_model_and_the_direct_effect_the_frozen_norm_by_hand(tmp_path):
    engine = tiny_engine("llama")
    sae = random_sae("L2.resid_post", d_in=engine.adapter.d_model, seed=8)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    result = engine.feature_attribution(PROMPT, folder, None, METRIC, top_n=1000, verify=0)
    ids = engine.passes.prompt_ids(PROMPT)[0]
    seen = {}
    last = engine.adapter.layers[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("r", _first(out)))
    try:
        with torch.no_grad():
            logits = engine.model(ids).logits[0, -1].double()
    finally:
        last.remove()
    assert result.base_metric == pytest.approx(float(logit_diff_of(engine)(logits)), abs=1e-5)
    resid = seen["r"][0, -1].double()  # [d_model], before the final norm
    norm = engine.model.model.norm
    scale = torch.sqrt(resid.pow(2).mean() + norm.variance_epsilon)
    w_u = engine.model.lm_head.weight.double()
    mary, john = (engine.tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    direction = w_u[mary] - w_u[john]
    at_end = result.positions == len(result.tokens) - 1
    assert at_end.any() and (~at_end).any()
    rows = sae.W_dec.double()[result.features[at_end]]  # [n, d_model]
    expected = result.activations[at_end] * ((rows / scale * norm.weight.double()) @ direction).numpy()
    np.testing.assert_allclose(result.direct[at_end], expected, rtol=1e-4, atol=1e-5)
    assert (result.direct[~at_end] == 0).all()
    x = resid.float()  # the site is the last layer's output: its error at the last token, read alike
    acts = sae.encode(x)
    error = (x - sae.decode(acts)).double()
    assert result.error_direct == pytest.approx(float((error / scale * norm.weight.double()) @ direction), abs=1e-4)
    assert result.direct_label == "logit(' Mary') - logit(' John')"


def test_a_kl_metric_has_no_direct_effect_and_prob_reads_the_target_logit(tmp_path):
    engine = tiny_engine("llama")
    folder = str(save_saelens(random_sae("L1.resid_post", seed=1), tmp_path / "sae"))
    kl = engine.feature_attribution(PROMPT, folder, None, Metric("kl"), top_n=5, verify=2)
    assert kl.direct_label is None and np.isnan(kl.direct).all() and np.isnan(kl.error_direct)
    assert kl.base_metric == pytest.approx(0.0, abs=1e-6)  # the run is the reference: its KL is 0
    prob = engine.feature_attribution(PROMPT, folder, None, Metric("prob", " Mary"), top_n=5, verify=2)
    assert prob.direct_label == "logit(' Mary')" and np.isfinite(prob.direct).all()


def test_bad_sizes_and_metrics_are_one_line_errors(tmp_path):
    engine = tiny_engine("llama")
    folder = str(save_saelens(random_sae("L1.resid_post"), tmp_path / "sae"))
    with pytest.raises(FeatureError, match="top_n must be in 1..1000"):
        engine.feature_attribution(PROMPT, folder, None, METRIC, top_n=0)
    outcome = execute(engine, FeatureAttributionRequest(PROMPT, folder, None, METRIC, top_n=5, verify=6))
    assert outcome.error == "verify must be in 0..5 (at most top_n), got 6"
    no_target = execute(engine, FeatureAttributionRequest(PROMPT, folder, None, Metric("prob")))
    assert no_target.error == "feature attribution needs a metric with a target token"
    missing = execute(engine, FeatureAttributionRequest(PROMPT, str(tmp_path / "nope"), None, METRIC))
    assert missing.error is not None and "not a folder" in missing.error


def test_replay_compares_candidates_by_position_and_feature(tmp_path):
    engine = tiny_engine("llama")
    folder = tmp_path / "sae"
    save_saelens(random_sae("L1.resid_post", seed=1), folder)
    request = FeatureAttributionRequest(PROMPT, str(folder), None, METRIC, top_n=8, verify=3)
    first = execute(engine, request)
    handler = handler_for(request)
    summary = handler.summarise(first.result)
    handler.check(request, summary)
    tight = Tolerance(1e-5, 1e-5, 0.0)
    assert handler.compare(summary, handler.summarise(handler.restore(request, summary)), tight) == []
    nudged = handler.summarise(first.result)
    nudged.arrays["exact"] = nudged.arrays["exact"] + np.float32(0.01)
    problem = handler.compare(summary, nudged, tight)
    assert len(problem) == 1 and "exact" in problem[0]
    save_saelens(random_sae("L1.resid_post", seed=2), folder)
    changed = handler.summarise(execute(engine, request).result)
    assert handler.compare(summary, changed, tight)[0].startswith("the SAE changed: digest")


def test_the_nnsight_backend_refuses_feature_attribution_by_capability(tmp_path):
    backend = NNsightEngine(tiny_model("llama"), tiny_tokenizer(), source="tiny-llama")
    outcome = execute(backend, FeatureAttributionRequest(PROMPT, str(tmp_path), None, METRIC))
    assert outcome.error == "NNsightEngine cannot read SAE features (capability 'features')"


def test_an_sae_where_nothing_fires_lists_no_candidate_but_still_the_error_node(tmp_path):
    engine = tiny_engine("llama")
    silent = dataclasses.replace(random_sae("L1.resid_post", seed=1), b_enc=torch.full((64,), -1e3))
    folder = str(save_saelens(silent, tmp_path / "sae"))
    outcome = execute(engine, FeatureAttributionRequest(PROMPT, folder, None, METRIC, top_n=5, verify=5))
    result = outcome.result
    assert result.n_active == 0 and len(result.features) == 0 and np.isfinite(result.error_exact)
    assert (result.feature_totals == 0).all()
    plain = engine.run(PROMPT, metric=METRIC).prediction.metric
    with torch.no_grad():  # nothing fires: removing the error leaves b_dec at every token
        logits = logits_with_site(engine.passes, engine.passes.prompt_ids(PROMPT)[0], "L1.resid_post",
                                  lambda x: silent.b_dec.expand_as(x).to(x.dtype).clone())[0, -1]
    assert result.error_exact == pytest.approx(float(logit_diff_of(engine)(logits)) - plain, abs=1e-5)
    handler = handler_for(outcome.request)
    assert handler.describe(handler.summarise(result)).startswith("L1.resid_post: no feature fires; error node")


def test_chunks_of_candidates_at_many_positions_each_reuse_the_base_runs_prefix(tmp_path, monkeypatch):
    from mechscope.engine.features import attribution

    monkeypatch.setattr(attribution, "VERIFY_BATCH", 3)  # many passes, each from its own first position
    engine = tiny_engine("qwen2")
    sae = random_sae("L0.mlp_out", d_in=engine.adapter.d_model, seed=9)
    folder = str(save_saelens(sae, tmp_path / "sae"))
    metric = Metric("logit_diff", " Mary", " John", position=-3)  # candidates after the readout change nothing
    result = engine.feature_attribution(PROMPT, folder, None, metric, top_n=40, verify=40)
    assert len(set(result.positions.tolist())) > 3
    engine.attach_sae("sae", sae)
    plain = engine.run(PROMPT, metric=metric).prediction.metric
    assert_exact_equals_ablations(engine, sae, result, metric, plain, 40)
    with torch.no_grad():  # the error node removed: the site's value replaced by its reconstruction
        logits = logits_with_site(engine.passes, engine.passes.prompt_ids(PROMPT)[0], sae.site,
                                  lambda x: sae.decode(sae.encode(x)).to(x.dtype))[0]  # [pos, vocab]
    mary, john = (engine.tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    diff = logits[:, mary] - logits[:, john]  # [pos]
    assert result.error_exact == pytest.approx(float(diff[-3]) - plain, abs=1e-5)  # a pass of its own
    at_start = Metric("logit_diff", " Mary", " John", position=0)  # every chunk starts at 0: the row joins one
    first = engine.feature_attribution(PROMPT, folder, None, at_start, top_n=5, verify=5)
    base = engine.run(PROMPT, metric=at_start).prediction.metric
    assert first.error_exact == pytest.approx(float(diff[0]) - base, abs=1e-5)
