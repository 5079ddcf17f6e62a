"""Estimate, then verify: an attribution estimate whose most likely top heads are patched exactly in one batched pass.

The exact value of head (l, h) is what `set_runs.sweep_set` computes for that cell, averaged over the
rows: metric(base with z_lh := z_lh(source)) - metric(base); noising, it equals `run_set` with a
resample `HeadAblation(l, h)`. Verification runs every (head, row) variant of a chunk in one pass
over the layers: a variant joins the batch at its head's layer (from the base run's residual there,
with that head patched) and runs to the end, so no layer below a patch is recomputed; and only the
positions from the chunk's first differing token on are computed, attending to the base run's keys
and values before it (the positions before hold the same activations in the base and source runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import Cancelled
from mechscope.engine.estimators import (
    Estimate,
    _leaf_hooks,
    _per_head,
    _setup,
    attn_delta,
    estimate,
)
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.layer_replay import (
    LayerCall,
    kv_recorders,
    last_mlp_at_readout,
    recorded_kv,
    take_rows,
)
from mechscope.engine.metric import SetMetricKind
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.results import EstimateMethod, VerifiedEstimate
from mechscope.engine.set_batches import (
    MAX_BATCH_ROWS,
    Batch,
    Padding,
    SetMetric,
    forward,
    head_outputs,
    layer_output,
    post_final,
)
from mechscope.engine.set_runs import paired_batches, shared_prefixes

if TYPE_CHECKING:
    from mechscope.engine.core import Engine

TOP = 10  # the heads a researcher reads first: auto verification aims to contain the exact top TOP
MAX_AUTO_VERIFY = 40  # auto never verifies more heads than this (the cost stays a few forwards)
AUTO_ROUNDS = 3  # batched verification passes at most: the first candidates, then what the bound leaves open


@dataclass
class BasePass:
    """What verification needs from the base run: each layer's call, the metric per row ([row]), the
    base and source head outputs ([row, pos, head*d_head] per layer), each row's first position that
    differs from its source row (`set_runs.shared_prefixes`) and each layer's keys and values
    ([row, kv_head, pos, d_head] each)."""

    batch: Batch
    calls: list[LayerCall]
    metric: SetMetric
    base_metric: torch.Tensor
    base_z: list[torch.Tensor]
    source_z: list[torch.Tensor]
    starts: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def patched_effects(engine: Engine, base: BasePass, heads: list[tuple[int, int]],
                    max_batch: int = MAX_BATCH_ROWS,
                    should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Exact patching effect of each head in `heads` on every row: [head, row]. Call under no_grad."""
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    rows = base.batch.rows
    out = np.zeros((len(heads), rows))
    # variant v: heads[v // rows] in row v % rows, in layer order so that a chunk is one pass
    variants = sorted(range(len(heads) * rows), key=lambda v: (heads[v // rows][0], v))
    for start in range(0, len(variants), max(1, max_batch)):
        chunk = variants[start:start + max(1, max_batch)]
        effect = _chunk_effects(engine, base, [heads[v // rows] for v in chunk],
                                [v % rows for v in chunk], n_heads, d_head, should_stop)
        for v, value in zip(chunk, effect):
            out[v // rows, v % rows] = value
    return out


def _chunk_effects(engine: Engine, base: BasePass, heads: list[tuple[int, int]], row_of: list[int],
                   n_heads: int, d_head: int, should_stop: Callable[[], bool] | None) -> list[float]:
    """One pass over the layers for variants sorted by layer: variant i patches heads[i] in row row_of[i]."""
    a = engine.adapter
    device = base.calls[0].hidden.device
    rows = base.batch.rows
    start = min(base.starts[r] for r in row_of)  # positions before it are the base run's in every variant
    layers = torch.tensor([layer for layer, _ in heads])
    hidden: torch.Tensor | None = None  # [n, suffix, d_model], variants that joined so far
    index = torch.zeros(0, dtype=torch.long, device=device)
    for layer in range(heads[0][0], a.n_layers):
        if should_stop is not None and should_stop():
            raise Cancelled("verification stopped")
        call = base.calls[layer]
        joining = (layers == layer).nonzero().flatten().tolist()
        joined = len(index)
        hooks: list[Hook] = []
        if joining:
            new_rows = torch.tensor([row_of[i] for i in joining], device=device)
            new_heads = torch.tensor([heads[i][1] for i in joining], device=device)
            fresh = call.hidden.index_select(0, new_rows)[:, start:]
            hidden = fresh if hidden is None else torch.cat([hidden, fresh])
            index = torch.cat([index, new_rows])
            src = base.source_z[layer].view(rows, -1, n_heads, d_head)[new_rows, start:, new_heads]  # [new, suffix, d_head]

            def patch(module, args, kwargs, joined=joined, new_heads=new_heads, src=src):
                x = args[0]  # [n, pos, head*d_head]
                z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [n, pos, head, d_head]
                z[joined + torch.arange(len(new_heads), device=z.device), :, new_heads] = src
                return (z.view(x.shape), *args[1:]), kwargs

            hooks.append(Hook("pre", a.o_proj(layer), patch))
        if start > 0:
            key, value = base.kv[layer]
            prefix = (key.index_select(0, index)[:, :, :start], value.index_select(0, index)[:, :, :start])
            hooks.append(Hook("attn", a.layer_module(layer, "attn"), control=AttentionControl(prefix_kv=prefix)))
        assert hidden is not None  # the first layer of the loop is the first variant's
        if layer == a.n_layers - 1:
            hooks = last_mlp_at_readout(a, base.batch.readout[index] - start, hooks) + hooks
        cut = LayerCall(call.hidden, take_rows(call.args, index, rows), take_rows(call.kwargs, index, rows)).suffix(start)
        with installed(hooks):
            hidden = layer_output(a.layers[layer](hidden, *cut.args, **cut.kwargs))
    assert hidden is not None
    picked = hidden[torch.arange(len(index), device=device), base.batch.readout[index] - start]  # [n, d_model]
    normed = post_final(engine, a.final_norm(picked))
    effect = base.metric.rows(index).value(engine, normed) - base.base_metric[index]  # [n], joining order
    # variants joined in sorted (layer) order, which is their order in `heads`
    return effect.float().cpu().tolist()


def _atp_with_base(engine: Engine, pset: PromptSet, kind: SetMetricKind, direction: str,
                   padding: Padding) -> tuple[Estimate, BasePass]:
    """AtP (as `estimators.atp`) whose one forward also records the base pass verification resumes from."""
    started = time.perf_counter()
    a = engine.adapter
    metric, base, source, source_z = _setup(engine, pset, kind, direction, padding)
    leaves: list = [None] * a.n_layers
    controls, recorders = kv_recorders(engine.adapter)
    with torch.enable_grad():
        run = forward(engine, base, _leaf_hooks(engine, leaves) + recorders, record_calls=True)
        values = metric.value(engine, run.normed)  # [row]
        grads = torch.autograd.grad(values.sum(), leaves)
    per_row = torch.stack([_per_head(engine, source_z[layer] - leaves[layer].detach(), grads[layer])
                           for layer in range(a.n_layers)], dim=1)  # [row, layer, head]
    calls = [LayerCall(c.hidden.detach(), c.args, c.kwargs) for c in run.calls]
    est = Estimate("atp", per_row.float().cpu().numpy().astype(np.float64), time.perf_counter() - started)
    base_z = [z.detach() for z in leaves]
    return est, BasePass(base, calls, metric, values.detach(), base_z, source_z, shared_prefixes(base, source),
                         recorded_kv(controls))


def _base_pass(engine: Engine, pset: PromptSet, kind: SetMetricKind, direction: str, padding: Padding) -> BasePass:
    metric = SetMetric.of(engine, pset, kind)
    base, source = paired_batches(engine, pset, direction, padding)
    source_z = head_outputs(engine, source)
    leaves: list = [None] * engine.adapter.n_layers
    controls, recorders = kv_recorders(engine.adapter)
    run = forward(engine, base, _leaf_hooks(engine, leaves) + recorders, record_calls=True)
    return BasePass(base, run.calls, metric, metric.value(engine, run.normed), [z.detach() for z in leaves],
                    source_z, shared_prefixes(base, source), recorded_kv(controls))



def output_change(engine: Engine, base: BasePass) -> np.ndarray:
    """How much each head's patch moves the residual stream: the norm over positions of what patching
    it adds at its layer (through the output projection), per row: [row, layer, head]. Call under no_grad."""
    a = engine.adapter
    rows = base.batch.rows
    nodes = torch.arange(rows * a.n_heads, device=base.batch.ids.device)  # node v: head v // rows, row v % rows
    out = torch.zeros(rows, a.n_layers, a.n_heads)
    for layer in range(a.n_layers):
        delta = attn_delta(engine, layer, base.base_z[layer], base.source_z[layer], nodes // rows, nodes % rows)
        norms = delta.float().pow(2).sum(dim=(1, 2)).sqrt().cpu()  # [node]
        out[:, layer, :] = norms.view(a.n_heads, rows).T
    return out.numpy().astype(np.float64)


def candidates(estimated: np.ndarray, change: np.ndarray, exact: dict[tuple[int, int], float],
               top: int = TOP, limit: int = MAX_AUTO_VERIFY) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The heads still to verify (best first) and the uncertainty that chose them ([layer, head]).

    With nothing verified yet: the estimate's top `top` by magnitude and the `top` heads whose patch
    moves the residual most (`change`): a head the estimate misses (saturated attention downstream)
    still has to change its output to matter. Afterwards each head's value is bounded by
    |estimate| + c * change, c the largest error per unit of change among the verified heads
    (|exact - estimate| / change); a head is verified next when that bound reaches the `top`-th
    largest exact magnitude found so far (it could still be in the top). At most `limit` in all."""
    magnitude = np.abs(np.nan_to_num(estimated)).ravel()
    change = np.nan_to_num(change).ravel()
    n_heads = estimated.shape[1]
    done = {layer * n_heads + head for layer, head in exact}
    room = max(limit, top) - len(done)
    if not done:
        first = np.argsort(-magnitude, kind="stable")[:top].tolist()
        first += [int(i) for i in np.argsort(-change, kind="stable")[:top] if int(i) not in first]
        chosen = first[:room]
        return [divmod(int(i), n_heads) for i in chosen], np.zeros_like(estimated)
    index = np.array(sorted(done))
    found = np.array([exact[divmod(int(i), n_heads)] for i in index])
    errors = np.abs(found - np.nan_to_num(estimated).ravel()[index])
    scale = float(np.max(errors / np.maximum(change[index], 1e-12)))
    uncertain = scale * change
    threshold = np.sort(np.abs(found))[::-1][top - 1] if len(found) >= top else 0.0
    bound = magnitude + uncertain
    order = np.argsort(-bound, kind="stable")
    chosen = [int(i) for i in order if int(i) not in done and bound[i] >= threshold][:max(room, 0)]
    return [divmod(i, n_heads) for i in chosen], uncertain.reshape(estimated.shape)


def estimate_and_verify(engine: Engine, pset: PromptSet, method: EstimateMethod = "atp", steps: int = 5,
                        kind: SetMetricKind = "logit_diff", direction: str = "noising",
                        verify: int | None = None, padding: Padding = "left", max_batch: int = MAX_BATCH_ROWS,
                        should_stop: Callable[[], bool] | None = None,
                        max_verify: int = MAX_AUTO_VERIFY) -> VerifiedEstimate:
    """Estimate every head's patching effect with `method`, then patch the likely top heads exactly.

    verify None: the heads `candidates` picks from the estimate's uncertainty, in up to AUTO_ROUNDS
    batched passes, at most `max_verify` heads (its aim: the exact top 10 are among them); 0: none; k > 0: the estimate's top k by magnitude. With "atp" the
    estimate's own forward is the base pass verification resumes from."""
    if verify is not None and verify < 0:
        raise ValueError(f"verify must not be negative, got {verify}")
    started = time.perf_counter()
    with engine.guard():
        if method == "atp":
            est, base = _atp_with_base(engine, pset, kind, direction, padding)
        else:
            est = estimate(engine, pset, method, steps, kind, direction, padding)
            base = None
        estimated = est.mean  # [layer, head]
        if base is None and verify != 0:
            with torch.no_grad():
                base = _base_pass(engine, pset, kind, direction, padding)
        exact: dict[tuple[int, int], float] = {}
        spread = np.zeros_like(estimated)

        def check(heads: list[tuple[int, int]]) -> None:
            assert base is not None  # made above whenever anything is verified
            with torch.no_grad():
                effects = patched_effects(engine, base, heads, max_batch, should_stop)  # [head, row]
            exact.update({head: float(value) for head, value in zip(heads, effects.mean(axis=1))})

        if verify is None:
            assert base is not None  # made above: automatic verification checks something
            with torch.no_grad():
                change = output_change(engine, base).mean(axis=0)  # [layer, head]
            for _ in range(AUTO_ROUNDS):
                heads, spread = candidates(estimated, change, exact, limit=max_verify)
                if not heads:
                    break
                check(heads)
        elif verify:
            order = np.argsort(-np.abs(np.nan_to_num(estimated)).ravel(), kind="stable")[:verify]
            check([divmod(int(i), estimated.shape[1]) for i in order])
    return VerifiedEstimate(est.method, estimated, exact, time.perf_counter() - started, est.seconds, spread)


def recall_at(values: np.ndarray, exact: np.ndarray, k: int = TOP) -> float:
    """The share of the exact top k heads by magnitude that are in `values`' top k by magnitude."""
    v, x = np.abs(np.nan_to_num(values)).ravel(), np.abs(np.nan_to_num(exact)).ravel()
    k = min(k, x.size)
    top_exact = set(np.argsort(-x, kind="stable")[:k].tolist())
    top_values = set(np.argsort(-v, kind="stable")[:k].tolist())
    return len(top_exact & top_values) / k if k else 1.0
