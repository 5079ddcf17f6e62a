"""Gradient estimates of the head-patching effect over a prompt set: AtP, AtP* (QK fix, GradDrop), EAP-IG.

Every estimator approximates, per row and head (layer l, head h), the exact effect of patching that
head's output z (the output projection's input) from the source prompt into the base prompt:
metric(base with z_lh := z_lh(source)) - metric(base), as `set_runs.sweep_set` computes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from mechscope.engine import attention
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.layer_replay import take_rows
from mechscope.engine.metric import SetMetricKind
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import ESTIMATE_METHODS, MAX_IG_STEPS, Estimate, EstimateMethod
from mechscope.engine.set_batches import (
    MAX_BATCH_ROWS,
    Batch,
    Padding,
    SetMetric,
    forward,
    layer_output,
)
from mechscope.engine.set_runs import paired_batches

GRAD_ATTENTION = "mechscope_grad"


# ---------------------------------------------------------------------------- attention probes


class _Probe:
    """Attached to an attention module: keeps this call's probabilities [batch, head, q, k]; with
    `detach` they enter the rest of the pass as a leaf, so a backward stops at the patterns."""

    def __init__(self, detach: bool) -> None:
        self.detach = detach
        self.weights: torch.Tensor | None = None


def _grad_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query [batch, head, q, d_head]; key/value [batch, kv_head, k, d_head]
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    value = repeat_kv(value, query.shape[1] // value.shape[1])
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, head, q, k]
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [batch, head, q, k]
    probe: _Probe | None = getattr(module, "_mechscope_probe", None)
    if probe is not None:
        if probe.detach:
            weights = weights.detach().requires_grad_(True)
        probe.weights = weights
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [batch, q, head, d_head]
    return out, weights


@contextlib.contextmanager
def probed(engine: ResidentModel, detach: bool) -> Iterator[list[_Probe]]:
    """Eager attention with a probe on every layer for the duration of the block (the engine's own
    attention function is restored in `finally`)."""
    AttentionInterface.register(GRAD_ATTENTION, _grad_attention)
    AttentionMaskInterface.register(GRAD_ATTENTION, eager_mask)
    a = engine.adapter
    modules = [a.layer_module(layer, "attn") for layer in range(a.n_layers)]
    probes = [_Probe(detach) for _ in modules]
    try:
        engine.model.set_attn_implementation(GRAD_ATTENTION)
        for module, probe in zip(modules, probes):
            cast(Any, module)._mechscope_probe = probe  # a plain attribute, not a submodule
        yield probes
    finally:
        for module in modules:
            cast(Any, module)._mechscope_probe = None
        engine.model.set_attn_implementation(attention.ATTN_IMPLEMENTATION)


# ---------------------------------------------------------------------------- gradient passes


def _leaf_hooks(engine: ResidentModel, leaves: list, through: bool = False) -> list[Hook]:
    """Make each layer's z a gradient leaf; `through` keeps the graph below z (z + a zero leaf), so
    gradients also reach the patterns that produced it."""
    def make(layer: int):
        def hook(module, args, kwargs):
            if through:
                leaves[layer] = torch.zeros_like(args[0]).requires_grad_(True)
                return (args[0] + leaves[layer], *args[1:]), kwargs
            z = args[0].detach().requires_grad_(True)  # [row, pos, head*d_head]
            leaves[layer] = z
            return (z, *args[1:]), kwargs
        return hook

    return [Hook("pre", engine.adapter.o_proj(layer), make(layer)) for layer in range(engine.adapter.n_layers)]


def _per_head(engine: ResidentModel, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(z_source - z_base) . grad summed over positions and d_head: [row, pos, head*d_head] -> [row, head]."""
    a = engine.adapter
    return (delta * grad).view(delta.shape[0], delta.shape[1], a.n_heads, a.d_head).sum(dim=(1, 3))


def _tile(batch: Batch, times: int) -> Batch:
    return Batch(batch.ids.repeat(times, 1), batch.mask.repeat(times, 1), batch.position_ids.repeat(times, 1),
                 batch.lengths * times, batch.offsets * times, batch.readout.repeat(times))


def _source_z(engine: ResidentModel, batch: Batch) -> list[torch.Tensor]:
    leaves: list = [None] * engine.adapter.n_layers
    with torch.no_grad():
        forward(engine, batch, _leaf_hooks(engine, leaves))
    return [z.detach() for z in leaves]


def _setup(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind, direction: str, padding: Padding):
    metric = SetMetric.of(engine, pset, kind)
    base, source = paired_batches(engine, pset, direction, padding)
    return metric, base, source, _source_z(engine, source)


def atp(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff", direction: str = "noising",
        padding: Padding = "left") -> Estimate:
    """AtP: (z_source - z_base) . d metric / d z at the base run, summed over positions and d_head."""
    return eap_ig(engine, pset, steps=1, kind=kind, direction=direction, padding=padding, name="atp")


def eap_ig(engine: ResidentModel, pset: PromptSet, steps: int = 5, kind: SetMetricKind = "logit_diff",
           direction: str = "noising", padding: Padding = "left", name: str = "eap-ig") -> Estimate:
    """EAP-IG: (z_source - z_base) . mean_k d metric / d z at the inputs e_base + (k/steps)(e_source - e_base),
    k = 0..steps-1 (token embeddings interpolated; a left Riemann sum, so steps=1 is AtP)."""
    if not 1 <= steps <= MAX_IG_STEPS:
        raise ValueError(f"steps must be 1..{MAX_IG_STEPS}, got {steps}")
    started = time.perf_counter()
    a = engine.adapter
    with engine.guard():
        metric, base, source, source_z = _setup(engine, pset, kind, direction, padding)
        rows = base.rows
        tiled = _tile(base, steps)
        alpha = (torch.arange(steps, device=engine.device, dtype=engine.dtype) / steps).repeat_interleave(rows)
        embed = engine.model.get_input_embeddings()
        with torch.no_grad():
            e_source = embed(source.ids).repeat(steps, 1, 1)  # [step*row, pos, d_model]

        def interpolate(module, args, output):
            return output + alpha[:, None, None] * (e_source - output)

        leaves: list = [None] * a.n_layers
        hooks = _leaf_hooks(engine, leaves) + ([Hook("fwd", embed, interpolate)] if steps > 1 else [])
        with torch.enable_grad():
            normed = forward(engine, tiled, hooks).normed
            value = metric.rows(torch.arange(rows * steps, device=engine.device) % rows).value(engine, normed).sum()
            grads = torch.autograd.grad(value, leaves)
        base_z = [z[:rows].detach() for z in leaves]
        out = torch.stack([
            _per_head(engine, source_z[layer] - base_z[layer],
                      grads[layer].view(steps, rows, *grads[layer].shape[1:]).mean(0))
            for layer in range(a.n_layers)], dim=1)  # [row, layer, head]
    return Estimate(name, out.float().cpu().numpy().astype(np.float64), time.perf_counter() - started)


class _Gate(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by scales[index] (read at backward time)."""

    @staticmethod
    def forward(ctx, x, index, scales):
        ctx.index = index
        ctx.scales = scales
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scales[ctx.index], None, None


def graddrop(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff", direction: str = "noising",
             padding: Padding = "left") -> Estimate:
    """GradDrop: for each layer m, AtP_m = AtP with the gradient through layer m's own computation zeroed
    (the layer passes the residual's gradient through, nothing else); a head in layer l scores
    mean over m != l of |AtP_m| (one forward, one backward per layer). A magnitude: always >= 0."""
    started = time.perf_counter()
    a = engine.adapter
    with engine.guard():
        metric, base, source, source_z = _setup(engine, pset, kind, direction, padding)
        scales = [1.0] * a.n_layers
        inputs: dict[int, torch.Tensor] = {}

        def keep_input(layer: int):
            def hook(module, args, kwargs):
                inputs[layer] = args[0]
            return hook

        def gate(layer: int):
            def hook(module, args, output):
                out = layer_output(output)
                gated = inputs[layer] + _Gate.apply(out - inputs[layer], layer, scales)
                return (gated, *output[1:]) if isinstance(output, tuple) else gated
            return hook

        leaves: list = [None] * a.n_layers
        hooks = _leaf_hooks(engine, leaves)
        for layer in range(a.n_layers):
            hooks += [Hook("pre", a.layers[layer], keep_input(layer)), Hook("fwd", a.layers[layer], gate(layer))]
        per_drop = []
        with torch.enable_grad():
            value = metric.value(engine, forward(engine, base, hooks).normed).sum()
            for dropped in range(a.n_layers):
                scales[:] = [0.0 if i == dropped else 1.0 for i in range(a.n_layers)]
                grads = torch.autograd.grad(value, leaves, retain_graph=dropped < a.n_layers - 1)
                per_drop.append(torch.stack([_per_head(engine, source_z[layer] - leaves[layer].detach(), grads[layer])
                                             for layer in range(a.n_layers)], dim=1))  # [row, layer, head]
        drops = torch.stack(per_drop).abs()  # [dropped, row, layer, head]
        own = torch.eye(a.n_layers, dtype=torch.bool, device=drops.device)[:, None, :, None]  # m == l
        out = drops.masked_fill(own, 0.0).sum(0) / max(a.n_layers - 1, 1)
    return Estimate("graddrop", out.float().cpu().numpy().astype(np.float64), time.perf_counter() - started)


# ---------------------------------------------------------------------------- AtP*


class _StopAfterAttention(Exception):
    """Raised at the output projection: the QK fix needs only the patterns."""


def attn_delta(engine: ResidentModel, layer: int, base_z: torch.Tensor, source_z: torch.Tensor,
               heads: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """What patching head heads[i] of row index[i] adds to the residual at `layer` (through the output
    projection and any post-attention norm): [n, pos, d_model]."""
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    z = base_z.index_select(0, index)  # [n, pos, head*d_head]
    patched = z.view(*z.shape[:-1], n_heads, d_head).clone()
    src = source_z.index_select(0, index).view_as(patched)
    rows = torch.arange(len(index), device=z.device)
    patched[rows, :, heads] = src[rows, :, heads]
    o_proj = a.o_proj(layer)
    post = a.attn_post_norm(layer)
    out_patched = o_proj(patched.view(z.shape))
    out_base = o_proj(z)
    if post is not None:
        out_patched, out_base = post(out_patched), post(out_base)
    return out_patched - out_base


def recomputed_patterns(engine: ResidentModel, probes: list[_Probe], calls, layer: int, hidden: torch.Tensor,
                        index: torch.Tensor) -> torch.Tensor:
    """Attention probabilities [n, head, q, k] of `layer` on residual inputs `hidden` ([n, pos, d]),
    row i replaying batch row index[i]; only the layer's attention is computed. Call inside `probed`."""
    a = engine.adapter
    call = calls[layer]
    rows = call.hidden.shape[0]

    def stop(module, args, kwargs):
        raise _StopAfterAttention

    with installed([Hook("pre", a.o_proj(layer), stop)]):
        with contextlib.suppress(_StopAfterAttention):
            a.layers[layer](hidden, *take_rows(call.args, index, rows), **take_rows(call.kwargs, index, rows))
        weights = probes[layer].weights
        assert weights is not None  # the probe recorded the layer's attention before the stop
        return weights


def atp_star(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff", direction: str = "noising",
             padding: Padding = "left", max_batch: int = MAX_BATCH_ROWS, return_parts: bool = False):
    """AtP* (QK fix): for head n = (l, h) with residual change dr_n = attn_out(z patched) - attn_out(z),

        estimate(n) = (z_source - z_base) . g_frozen
                      + sum over later layers l' and their heads h' of
                        sum_{q,k} (A_l'h'(resid_l' + dr_n) - A_l'h') * d metric / d A_l'h'

    g_frozen is the gradient with every attention pattern held fixed (so no pattern change is
    linearised), d metric / d A comes from the same backward, and each later head's pattern is
    recomputed exactly from its query and key inputs moved by dr_n (dr_n reaches them through the
    residual stream directly). Returns an `Estimate` (and, with return_parts, the linear and QK
    terms as [row, layer, head] arrays)."""
    started = time.perf_counter()
    a = engine.adapter
    n_heads = a.n_heads
    with engine.guard():
        metric, base, source, source_z = _setup(engine, pset, kind, direction, padding)
        rows = base.rows
        leaves: list = [None] * a.n_layers
        base_z = _source_z(engine, base)
        with torch.enable_grad(), probed(engine, detach=True) as probes:
            run = forward(engine, base, _leaf_hooks(engine, leaves, through=True), record_calls=True)
            value = metric.value(engine, run.normed).sum()
            patterns = [cast(torch.Tensor, p.weights) for p in probes]  # every probe recorded in the forward
            grads = torch.autograd.grad(value, leaves + patterns)
        g_z, g_a = grads[:a.n_layers], grads[a.n_layers:]
        clean_a = [p.detach() for p in patterns]  # [row, head, q, k] per layer
        calls = [type(c)(c.hidden.detach(), c.args, c.kwargs) for c in run.calls]
        linear = torch.stack([_per_head(engine, source_z[layer] - base_z[layer], g_z[layer])
                              for layer in range(a.n_layers)], dim=1)  # [row, layer, head]
        qk = torch.zeros_like(linear)
        with torch.no_grad(), probed(engine, detach=False) as probes:
            nodes = torch.arange(rows * n_heads, device=engine.device)  # node v: head v // rows, row v % rows
            for layer in range(a.n_layers - 1):
                deltas = attn_delta(engine, layer, base_z[layer], source_z[layer], nodes // rows, nodes % rows)
                for later in range(layer + 1, a.n_layers):
                    for start in range(0, len(nodes), max_batch):
                        part = nodes[start:start + max_batch]
                        index = part % rows
                        hidden = calls[later].hidden.index_select(0, index) + deltas[start:start + max_batch]
                        moved = recomputed_patterns(engine, probes, calls, later, hidden, index)
                        change = (moved - clean_a[later].index_select(0, index)) * g_a[later].index_select(0, index)
                        qk[index, layer, part // rows] += change.sum(dim=(1, 2, 3)).to(qk.dtype)
        total = linear + qk
    estimate = Estimate("atp*", total.float().cpu().numpy().astype(np.float64), time.perf_counter() - started)
    if return_parts:
        return estimate, linear.float().cpu().numpy(), qk.float().cpu().numpy()
    return estimate


def estimate(engine: ResidentModel, pset: PromptSet, method: EstimateMethod, steps: int = 5, kind: SetMetricKind = "logit_diff",
             direction: str = "noising", padding: Padding = "left") -> Estimate:
    """One estimator by name: "atp", "atp*", "graddrop" or "eap-ig" (with `steps`)."""
    if method == "atp":
        return atp(engine, pset, kind, direction, padding)
    if method == "atp*":
        return atp_star(engine, pset, kind, direction, padding)
    if method == "graddrop":
        return graddrop(engine, pset, kind, direction, padding)
    if method == "eap-ig":
        return eap_ig(engine, pset, steps, kind, direction, padding)
    raise ValueError(f"unknown estimator {method!r} (known: {', '.join(ESTIMATE_METHODS)})")
