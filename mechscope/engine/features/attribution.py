"""Attribution to SAE features: activation x gradient per (position, feature), the error term as its own node, exact ablations of the top candidates and their direct effect through the frozen final norm.

Everything runs from the SAE's layer on, on the base run (the prompt with the request's
interventions): the layers below the site are the base pass's, recorded once (cached when there
are no interventions). Attribution patching is one forward with grad and one backward to the
site's value x; verification ablates each of the top candidates in its own batch row
(x' = x - a_i W_dec[i] at one position, the SAE's error kept: `FeatureAblation`), VERIFY_BATCH rows
a pass taken in position order, each pass computing only the positions from its first ablated one
on (attending to the base run's keys and values before it; every position under interventions,
which may knock out attention edges into that prefix, as sweeps do). The error node's row (the
site's value replaced by its reconstruction everywhere) joins a pass that computes every position,
or has its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import PromptError
from mechscope.engine.features.reading import SITE_KINDS
from mechscope.engine.features.results import (
    MAX_ATTRIBUTED_FEATURES,
    MAX_VERIFIED_FEATURES,
    FeatureAttribution,
)
from mechscope.engine.features.sae import FeatureError, SparseAutoencoder
from mechscope.engine.hooks import Hook
from mechscope.engine.metric import Metric
from mechscope.engine.passes import CleanPass, Passes
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.readouts import metric_direction, read_through_final_norm
from mechscope.engine.results import MetricInfo
from mechscope.engine.sites import Site
from mechscope.engine.sweeps import base_pass, suffix_calls

VERIFY_BATCH = 32  # ablated variants per batched pass
EditHooks = Callable[[], list[Hook]]
MetricAt = Callable[[torch.Tensor], torch.Tensor]  # final residuals at the readout [row, d_model] -> [row]


def check_sizes(top_n: int, verify: int) -> None:
    """FeatureError unless 1 <= top_n <= MAX_ATTRIBUTED_FEATURES and 0 <= verify <= min(top_n, MAX_VERIFIED_FEATURES)."""
    if not isinstance(top_n, int) or not 1 <= top_n <= MAX_ATTRIBUTED_FEATURES:
        raise FeatureError(f"top_n must be in 1..{MAX_ATTRIBUTED_FEATURES}, got {top_n}")
    if not isinstance(verify, int) or not 0 <= verify <= min(top_n, MAX_VERIFIED_FEATURES):
        raise FeatureError(f"verify must be in 0..{min(top_n, MAX_VERIFIED_FEATURES)} (at most top_n), got {verify}")


def feature_attribution(passes: Passes, sae: SparseAutoencoder, prompt: str, metric: Metric | None,
                        edit_hooks: EditHooks | None = None, top_n: int = 20, verify: int = 10,
                        should_stop: ShouldStop | None = None, include_first: bool = False) -> FeatureAttribution:
    """Rank the active features of `sae` on `prompt` by their attribution-patching estimate, ablate the
    top `verify` exactly and read every listed one's direct effect; see `FeatureAttribution`.
    `edit_hooks` makes fresh hooks of the interventions every pass runs under. The first token is a
    candidate only with `include_first`: it is the attention sink, whose outlier activations SAEs are
    trained without (its estimates still count in `feature_totals`). Callers hold the engine's lock."""
    check_sizes(top_n, verify)
    if metric is None or not metric.measurable:
        raise PromptError("feature attribution needs a metric with a target token")
    started = time.perf_counter()
    ids, _ = passes.prompt_ids(prompt)
    info = passes.metric_info(metric, ids.shape[1])
    readout = info.position
    with torch.no_grad():
        reference = None  # kl: divergence from the prompt's own run without interventions
        if info.kind == "kl":
            reference = passes.logits(passes.clean(ids, should_stop=should_stop).final[:, readout])[0]  # [vocab]

        def metric_at(resid: torch.Tensor) -> torch.Tensor:
            return passes.metric_of_resid(resid, info, reference)

        base = base_pass(passes, ids, edit_hooks, should_stop)
        base_metric = float(metric_at(base.final[:, readout])[0])
    x, grad = _site_gradient(passes, base, sae, readout, metric_at, edit_hooks, should_stop)  # [pos, d_in] each
    with torch.no_grad():
        acts = sae.encode(x)  # [pos, d_sae]
        x, grad = x.to(acts.device), grad.to(acts.device)
        error = x - sae.decode(acts)  # [pos, d_in]
        estimates = -acts * (grad @ sae.W_dec.T)  # [pos, d_sae]
        active = acts > 0  # [pos, d_sae]
        if not include_first:
            active[0] = False
        position, feature = active.nonzero(as_tuple=True)  # [active] each, by position then feature
        scores = estimates[position, feature]  # [active]
        order = torch.sort(scores.abs(), descending=True, stable=True).indices[:top_n]
        position, feature = position[order], feature[order]
        activation = acts[position, feature]  # [n]
        exact = np.full(len(order), np.nan, dtype=np.float32)
        error_exact = float("nan")
        if verify:
            ablated = _ablations(passes, base, sae, position[:verify], feature[:verify], activation[:verify],
                                 error, metric_at, readout, edit_hooks, should_stop) - base_metric
            exact[:len(ablated) - 1], error_exact = ablated[:-1], float(ablated[-1])
        direct, error_direct, label = _direct(passes, base, info, sae, position, feature, activation,
                                              error[readout])
    return FeatureAttribution(
        site=sae.site, sae_digest=sae.digest, d_sae=sae.d_sae,
        tokens=[passes.decode_token(int(i)) for i in ids[0].tolist()], metric_position=readout,
        base_metric=base_metric, n_active=len(scores), include_first=include_first,
        positions=position.cpu().numpy().astype(np.int64), features=feature.cpu().numpy().astype(np.int64),
        activations=activation.cpu().numpy().astype(np.float32),
        estimates=scores[order].cpu().numpy().astype(np.float32), exact=exact, direct=direct,
        error_estimates=(-(error * grad).sum(-1)).cpu().numpy().astype(np.float32),
        bias_estimates=(-(sae.b_dec * grad).sum(-1)).cpu().numpy().astype(np.float32),
        feature_totals=estimates.sum(-1).cpu().numpy().astype(np.float32),
        error_exact=error_exact, error_direct=error_direct, direct_label=label, seconds=time.perf_counter() - started)


def _site_hooks(passes: Passes, sae: SparseAutoencoder, edit_hooks: EditHooks | None,
                fn: Callable[[torch.Tensor], torch.Tensor]) -> list[Hook]:
    """The interventions' hooks, then `fn` editing the SAE's site (so it sees the edited value)."""
    hooks = edit_hooks() if edit_hooks is not None else []
    return hooks + Site(SITE_KINDS[sae.site_kind], sae.layer).edit(passes.adapter, fn)


def _site_gradient(passes: Passes, base: CleanPass, sae: SparseAutoencoder, readout: int, metric_at: MetricAt,
                   edit_hooks: EditHooks | None, should_stop: ShouldStop | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The site's value x and d metric / d x, both [pos, d_in] float32: the layers from the site's on,
    replayed from the base pass with the site's value as the only leaf (weights need no gradient)."""
    leaf: list[torch.Tensor] = []

    def make_leaf(x: torch.Tensor) -> torch.Tensor:  # [1, pos, d_in]
        leaf.append(x.detach().requires_grad_(True))
        return leaf[-1]

    layer = sae.layer
    with torch.enable_grad():
        final = passes.run_layers(base.calls, layer, base.calls[layer].hidden,
                                  _site_hooks(passes, sae, edit_hooks, make_leaf), should_stop)
        (grad,) = torch.autograd.grad(metric_at(final[:, readout]).sum(), [leaf[0]])
    return leaf[0].detach()[0].float(), grad[0].float()


def _ablations(passes: Passes, base: CleanPass, sae: SparseAutoencoder, position: torch.Tensor,
               feature: torch.Tensor, activation: torch.Tensor, error: torch.Tensor, metric_at: MetricAt,
               readout: int, edit_hooks: EditHooks | None, should_stop: ShouldStop | None) -> np.ndarray:
    """The metric with each candidate ablated, one batch row each, then with the SAE's error removed
    at every position (the site's value becomes its reconstruction): [n + 1]. Row r's site value loses
    activation[r] * W_dec[feature[r]] at position[r]. The layers below the site are the base pass's;
    without interventions, positions before a chunk's first ablated one are too (the chunk attends to
    the base run's keys and values there), candidates taken in position order."""
    order = torch.argsort(position.cpu(), stable=True)
    out = np.full(len(position) + 1, np.nan)
    chunks = [order[start:start + VERIFY_BATCH] for start in range(0, len(order), VERIFY_BATCH)]
    for chunk in chunks:
        where = position[chunk.to(position.device)]  # [row]
        deltas = activation[chunk.to(activation.device), None] * sae.W_dec[feature[chunk.to(feature.device)]]
        prefix = 0 if edit_hooks is not None else min(int(where.min()), readout)
        with_error = prefix == 0 and np.isnan(out[-1])  # a chunk computing every position takes the error row
        values = _pass(passes, base, sae, prefix, len(where) + with_error,
                       _ablating(where - prefix, deltas, error if with_error else None), metric_at, readout,
                       edit_hooks, should_stop)
        out[chunk.numpy()] = values[:len(where)]
        if with_error:
            out[-1] = values[-1]
    if np.isnan(out[-1]):
        nothing = position[:0]
        out[-1] = _pass(passes, base, sae, 0, 1, _ablating(nothing, sae.W_dec[nothing], error), metric_at,
                        readout, edit_hooks, should_stop)[0]
    return out


def _pass(passes: Passes, base: CleanPass, sae: SparseAutoencoder, prefix: int, rows: int,
          edit: Callable[[torch.Tensor], torch.Tensor], metric_at: MetricAt, readout: int,
          edit_hooks: EditHooks | None, should_stop: ShouldStop | None) -> np.ndarray:
    """The metric of `rows` copies of the base run from the site's layer on, positions prefix.. only,
    with `edit` applied to the site's value [row, pos - prefix, d_in]: [row]."""
    layer = sae.layer
    calls, prefix_kv = suffix_calls(passes, base, prefix)
    hooks = _site_hooks(passes, sae, edit_hooks, edit)
    hooks += [Hook("attn", passes.adapter.layer_module(index, "attn"), control=AttentionControl(prefix_kv=kv))
              for index, kv in prefix_kv.items() if index >= layer]
    hidden = base.calls[layer].hidden[:, prefix:].expand(rows, -1, -1).contiguous()  # [row, pos - prefix, d_model]
    final = passes.run_layers(calls, layer, hidden, hooks, should_stop)
    return metric_at(final[:, readout - prefix]).float().cpu().numpy().astype(np.float64)


def _ablating(where: torch.Tensor, deltas: torch.Tensor,
              error: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit taking deltas[r] [d_in] off batch row r's site value at position where[r] and, with
    `error` [pos, d_in], the error off every position of the row after those."""
    rows = torch.arange(len(where))

    def ablate(x: torch.Tensor) -> torch.Tensor:  # [row, pos, d_in]
        x[rows.to(x.device), where.to(x.device)] -= deltas.to(x.device, x.dtype)
        if error is not None:
            x[len(where)] -= error.to(x.device, x.dtype)
        return x

    return ablate


def _direct(passes: Passes, base: CleanPass, info: MetricInfo, sae: SparseAutoencoder, position: torch.Tensor,
            feature: torch.Tensor, activation: torch.Tensor,
            error: torch.Tensor) -> tuple[np.ndarray, float, str | None]:
    """Each candidate's direct effect on the metric's logit direction: a * W_dec[i] read through the
    final norm frozen at the base run's residual at the metric's position (0 at other positions: the
    residual there never reaches the readout directly), the error term's at that position, and what
    is read. logit_diff: logit(target) - logit(foil); prob and loss: logit(target), the logit they
    are a function of; kl and post-LN models: NaN, no direction to read (kl moves every logit)."""
    n = len(position)
    if info.kind == "kl" or passes.adapter.post_ln:
        return np.full(n, np.nan, dtype=np.float32), float("nan"), None
    readout = info.position
    direction, _, label = metric_direction(passes, info, passes.logits(base.final[0, readout]))
    _, _, _, read = read_through_final_norm(passes, direction, base.final[0, readout])  # [d_model]
    read = read.to(sae.device)
    direct = activation * (sae.W_dec[feature] @ read)  # [n]
    direct = torch.where(position == readout, direct, torch.zeros_like(direct))
    return direct.cpu().numpy().astype(np.float32), float(error.float() @ read), label
