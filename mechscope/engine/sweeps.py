"""Patching sweeps over a model's passes: heads, residual positions, attribution patching."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.layer_replay import LayerCall, kv_recorders, last_mlp_at_readout, recorded_kv
from mechscope.engine.metric import Metric
from mechscope.engine.passes import CleanPass, Passes, SourceActs, SourceQKV
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import (
    HEAD_INPUTS,
    SWEEP_KINDS,
    Direction,
    SweepKind,
    SweepResult,
    check_direction,
)
from mechscope.engine.sites import Site

ProgressCallback = Callable[[SweepResult], None]
EditHooks = Callable[[], list[Hook]]


def _check_arguments(kind: str, direction: str, metric: Metric | None, head_input: str = "output") -> None:
    if kind not in SWEEP_KINDS:
        raise ValueError(f"sweep kind must be one of {', '.join(SWEEP_KINDS)}, got {kind!r}")
    if head_input not in HEAD_INPUTS:
        raise ValueError(f"head_input must be one of {', '.join(HEAD_INPUTS)}, got {head_input!r}")
    if head_input != "output" and kind != "head":
        raise ValueError(f"only the head sweep patches a head's {head_input}; a {kind} sweep patches outputs")
    check_direction(direction)
    if metric is None or not metric.measurable:
        raise PromptError("a sweep needs a metric with a target token")


def sweep(passes: Passes, kind: SweepKind, clean: str, corrupt: str, metric: Metric,
          direction: Direction = "noising",
          on_progress: ProgressCallback | None = None,
          should_stop: ShouldStop | None = None,
          edit_hooks: EditHooks | None = None, head_input: str = "output") -> SweepResult:
    """Patch every head (or residual position, or attention / MLP output per position) from the
    source run into the base run.

    noising: base = clean, source = corrupt (how much does the metric drop when a component sees
    the corrupted input?). denoising: the reverse. `values` is metric(patched) - metric(base):
    [layer, head] for "head", [layer, pos] for "resid", "attn" and "mlp". "atp" approximates the
    head sweep with one forward and backward pass (attribution patching). `edit_hooks`, when
    given, makes a fresh set of intervention hooks that every pass (base, source, variants) runs
    under: the sweep is then one of the edited model. `head_input` "q", "k" or "v" makes the head
    sweep patch each head's query, key or value instead of its output (with grouped-query attention
    a key / value cell patches the KV head its query head reads, shared with the others).
    """
    _check_arguments(kind, direction, metric, head_input)
    started = time.perf_counter()
    base_prompt, source_prompt = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    with torch.no_grad():
        base_ids, _ = passes.prompt_ids(base_prompt)
        source_ids, _ = passes.prompt_ids(source_prompt)
        n_pos = base_ids.shape[1]
        if source_ids.shape[1] != n_pos:
            raise PromptError(
                f"clean and corrupted prompts must have the same number of tokens for a sweep "
                f"({base_ids.shape[1]} vs {source_ids.shape[1]})")
        info = passes.metric_info(metric, n_pos)
        readout = info.position
        reference = None  # kl: divergence from the clean prompt's own run, without interventions
        if info.kind == "kl":
            clean_pass = passes.clean(base_ids if direction == "noising" else source_ids, should_stop=should_stop)
            reference = passes.logits(clean_pass.final[:, readout])[0]  # [vocab]

        def metric_of(final: torch.Tensor) -> torch.Tensor:  # [batch, pos, d] -> [batch]
            return passes.metric_of_resid(final[:, readout], info, reference)

        source = passes.source_acts(source_ids, edit_hooks() if edit_hooks is not None else None)
        inputs = (passes.source_qkv(source_ids, edit_hooks() if edit_hooks is not None else None)
                  if head_input != "output" else None)
        source_metric = float(metric_of(source.resid_post[-1])[0])
        if kind == "atp":
            atp_values, base_metric = _attribution_patching(passes, base_ids, source, metric_of, edit_hooks)
        else:
            base = base_pass(passes, base_ids, edit_hooks, should_stop)
            base_metric = float(metric_of(base.final)[0])
        a = passes.adapter
        layer_labels = [f"L{layer}" for layer in range(a.n_layers)]
        if kind in ("head", "atp"):
            col_labels = [f"H{h}" for h in range(a.n_heads)]
            values = np.full((a.n_layers, a.n_heads), np.nan, dtype=np.float32)
        else:
            col_labels = [f"{p}:{passes.decode_token(t)}" for p, t in enumerate(base_ids[0].tolist())]
            values = np.full((a.n_layers, n_pos), np.nan, dtype=np.float32)

        def result(complete: bool) -> SweepResult:
            return SweepResult(kind=kind, values=values.copy(), base_metric=base_metric,
                               source_metric=source_metric, row_labels=layer_labels,
                               col_labels=col_labels, complete=complete,
                               seconds=time.perf_counter() - started)

        if kind == "atp":
            values[:] = atp_values
            out = result(True)
            if on_progress is not None:
                on_progress(out)
            return out

        # Positions before the first token where the prompts differ (and before the readout) hold
        # the same activations in both runs, so every variant shares them: compute only the suffix,
        # attending to the base run's cached keys and values for the prefix. Under interventions
        # (which may knock out attention edges into the prefix) every position is computed.
        differs = (base_ids[0] != source_ids[0]).nonzero()
        prefix = 0 if edit_hooks is not None else min(int(differs[0]) if len(differs) else n_pos, readout)
        calls, prefix_kv = suffix_calls(passes, base, prefix)
        per_layer = a.n_heads if kind == "head" else n_pos - prefix  # variants a layer adds

        def variants(layer: int, row0: int) -> tuple[torch.Tensor, list[Hook]]:
            start_hidden = base.calls[layer].hidden[:, prefix:]
            if inputs is not None:
                return _input_variants(passes, head_input, layer, start_hidden, inputs, prefix, row0)
            return _variants(passes, kind, layer, start_hidden, source, prefix, row0)

        for first, end in layer_chunks(a.n_layers, per_layer * (n_pos - prefix)):
            final = joined_pass(passes, calls, first, end, variants, prefix_kv, edit_hooks, should_stop,
                                readout - prefix)
            effects = passes.metric_of_resid(final[:, readout - prefix], info, reference) - base_metric
            rows = effects.float().cpu().numpy().reshape(end - first, per_layer)  # variants joined in layer order
            for layer in range(first, end):
                if layer > first and should_stop is not None and should_stop():
                    raise Cancelled("sweep stopped")
                values[layer] = np.concatenate([np.zeros(values.shape[1] - per_layer), rows[layer - first]])
                if on_progress is not None:
                    on_progress(result(False))
        return result(True)


JOINED_TOKENS = 8192  # variants x positions one joined pass carries at most (a layer's variants always fit)


def layer_chunks(n_layers: int, tokens_per_layer: int, budget: int = JOINED_TOKENS) -> list[tuple[int, int]]:
    """Consecutive layer ranges [first, end) whose variants share one joined pass: the first layer
    alone (its row of cells shows at once, for a few percent more time), then as many layers as fit
    in `budget` tokens (at least one)."""
    per_chunk = max(1, budget // max(1, tokens_per_layer))
    return [(0, min(1, n_layers))] + [(first, min(first + per_chunk, n_layers)) for first in range(1, n_layers, per_chunk)]


def joined_pass(passes: Passes, calls: list[LayerCall], first: int, end: int,
                variants: Callable[[int, int], tuple[torch.Tensor, list[Hook]]],
                prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]], edit_hooks: EditHooks | None,
                should_stop: ShouldStop | None, readout: int) -> torch.Tensor:
    """The variants of layers first..end-1 in one pass over the layers: layer L's variants join the
    batch at L (`variants(L, row0)`: their inputs from the base run's residual at L and hooks that
    patch batch rows row0.. only) and run on to the last layer with the ones that joined before.

    A variant computes what it did alone (the same layers, positions and patch), but each layer runs
    once for all of them, on a batch big enough to use the hardware (one pass per layer costs about
    twice a batch of a few rows per token on two CPU cores). Returns the last layer's output
    [variant, suffix, d_model], variants in layer order, right at suffix position `readout` only."""
    a = passes.adapter
    shared = edit_hooks() if edit_hooks is not None else []  # one pass: one set of intervention hooks
    hidden: torch.Tensor | None = None
    for layer in range(first, a.n_layers):
        hooks = list(shared)  # before the patch: the patch wins
        if layer < end:
            fresh, patch = variants(layer, 0 if hidden is None else hidden.shape[0])
            hidden = fresh if hidden is None else torch.cat([hidden, fresh])
            hooks += patch
        if layer in prefix_kv:
            hooks.append(Hook("attn", a.layer_module(layer, "attn"), control=AttentionControl(prefix_kv=prefix_kv[layer])))
        if layer == a.n_layers - 1:
            hooks = last_mlp_at_readout(a, readout, hooks) + hooks
        assert hidden is not None  # the first layer of the loop adds its variants
        hidden = passes.run_layers(calls, layer, hidden, hooks, should_stop, stop=layer + 1)  # [row, suffix, d]
    assert hidden is not None
    return hidden


def base_pass(passes: Passes, ids: torch.Tensor, edit_hooks: EditHooks | None,
               should_stop: ShouldStop | None) -> CleanPass:
    """The base run: the cached clean pass (a new one keeps every layer's keys and values, which
    `suffix_calls` needs), or a fresh one under the interventions' hooks."""
    if edit_hooks is None:
        cached = passes.cached_clean(ids)
        if cached is not None:
            return cached
        controls, hooks = kv_recorders(passes.adapter)
        clean = passes.clean_forward(ids, should_stop=should_stop, extra_hooks=hooks)[0]
        clean.views[("kv",)] = recorded_kv(controls)
        return clean
    return passes.clean_forward(ids, should_stop=should_stop, extra_hooks=edit_hooks(), cache=False)[0]


def _variants(passes: Passes, kind: str, layer: int, start_hidden: torch.Tensor, source: SourceActs,
              prefix: int, row0: int = 0) -> tuple[torch.Tensor, list[Hook]]:
    """One batch row per cell of `layer`'s row of the matrix: the rows' input [row, suffix, d_model]
    and the hooks patching batch row row0 + r's component (head r, or position prefix + r) from
    `source` (rows before row0 belong to other layers' variants)."""
    a = passes.adapter
    suffix = start_hidden.shape[1]  # start_hidden [1, suffix, d_model]
    if kind == "head":
        rows = torch.arange(a.n_heads, device=start_hidden.device)
        src_z = source.z[layer][0, prefix:]  # [suffix, head, d_head]

        def patch_each_head(z: torch.Tensor) -> torch.Tensor:  # [row, suffix, head, d_head]
            z[row0 + rows, :, rows] = src_z[:, rows].transpose(0, 1)
            return z

        hidden = start_hidden.expand(a.n_heads, -1, -1).contiguous()  # [head, suffix, d_model]
        return hidden, Site("heads", layer).edit(a, patch_each_head)
    rows = torch.arange(suffix, device=start_hidden.device)
    if kind == "resid":
        hidden = start_hidden.expand(suffix, -1, -1).clone()  # [variant, suffix, d_model]
        hidden[rows, rows] = source.resid_pre[layer][0, prefix:]
        return hidden, []
    src_out = (source.attn_out if kind == "attn" else source.mlp_out)[layer][0, prefix:]  # [suffix, d_model]

    def patch_each_position(x: torch.Tensor) -> torch.Tensor:  # [row, suffix, d_model]
        x[row0 + rows, rows] = src_out
        return x

    hidden = start_hidden.expand(suffix, -1, -1).contiguous()  # [variant, suffix, d_model]
    return hidden, Site(kind, layer).edit(a, patch_each_position)  # type: ignore[arg-type]


def _input_variants(passes: Passes, which: str, layer: int, start_hidden: torch.Tensor, inputs: SourceQKV,
                    prefix: int, row0: int = 0) -> tuple[torch.Tensor, list[Hook]]:
    """One batch row per head of `layer`: batch row row0 + r's query (or the key / value of the KV
    head query head r reads) patched from `inputs` at positions prefix.."""
    a = passes.adapter
    rows = torch.arange(a.n_heads, device=start_hidden.device)
    index = rows if which == "q" else rows // (a.n_heads // a.n_kv_heads)
    source = inputs.of(which)[layer][0, :, prefix:]  # [head | kv_head, suffix, d_head]
    slot = "qkv".index(which)

    def patch_each_head(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        x = (query, key, value)[slot]  # [row, head | kv_head, suffix, d_head]
        x[row0 + rows, index] = source[index.to(source.device)].to(x.device)
        return query, key, value

    hidden = start_hidden.expand(a.n_heads, -1, -1).contiguous()  # [head, suffix, d_model]
    return hidden, [Hook("qkv", a.layer_module(layer, "attn"), patch_each_head)]


def suffix_calls(passes: Passes, base: CleanPass, prefix: int):
    """Layer calls cut to positions >= prefix, and each layer's keys/values for the prefix."""
    if prefix == 0:
        return base.calls, {}
    def record() -> list[tuple[torch.Tensor, torch.Tensor]]:
        controls, hooks = kv_recorders(passes.adapter)
        passes.run_layers(base.calls, 0, base.calls[0].hidden, hooks, None)
        return recorded_kv(controls)

    kv = base.view(("kv",), record)
    prefix_kv = {layer: (k[:, :, :prefix], v[:, :, :prefix]) for layer, (k, v) in enumerate(kv)}
    return [call.suffix(prefix) for call in base.calls], prefix_kv


def _attribution_patching(passes: Passes, base_ids: torch.Tensor, source: SourceActs, metric_of,
                          edit_hooks: EditHooks | None = None) -> tuple[np.ndarray, float]:
    """AtP: (z_source - z_base) . d metric / d z, summed over positions and each head's dimensions.

    One forward with grad (from the cached clean pass when there is one) and one backward to the
    head outputs only: weights never need gradients. Returns the [layer, head] estimates and the
    base metric."""
    a = passes.adapter
    leaves: dict[int, torch.Tensor] = {}

    def make_leaf(layer: int):
        def hook(module, args, kwargs):
            z = args[0].detach().requires_grad_(True)  # [1, pos, head*d_head]
            leaves[layer] = z
            return (z, *args[1:]), kwargs

        return hook

    hooks = [Hook("pre", a.o_proj(layer), make_leaf(layer)) for layer in range(a.n_layers)]
    with torch.enable_grad():
        cached = passes.cached_clean(base_ids)
        if edit_hooks is not None:  # the leaves are the edited head outputs
            final = passes.clean_forward(base_ids, extra_hooks=[*edit_hooks(), *hooks], cache=False)[1]
        elif cached is not None:
            final = passes.run_layers(cached.calls, 0, cached.calls[0].hidden, hooks, None)
        else:
            final = passes.clean_forward(base_ids, extra_hooks=hooks)[1]
        value = metric_of(final).sum()
        grads = torch.autograd.grad(value, [leaves[layer] for layer in range(a.n_layers)])
    out = np.zeros((a.n_layers, a.n_heads), dtype=np.float32)
    for layer, grad in enumerate(grads):
        delta = (source.z[layer].flatten(-2) - leaves[layer].detach()) * grad  # [1, pos, head*d_head]
        out[layer] = delta.view(-1, a.n_heads, a.d_head).sum(dim=(0, 2)).float().cpu().numpy()
    return out, float(value.detach())
