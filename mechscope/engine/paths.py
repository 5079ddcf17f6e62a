"""Path patching: a sender head's change reaching only chosen receivers, and every sender into one receiver.

The sender's change is Δ = what its layer's attention adds to the residual stream with only the
sender's output taken from the source run, minus what it adds in the base run ([pos, d_model]; for
most families the sender's output through its slice of W_O, for Gemma2/3 through the post-attention
norm as well). A receiver sees its input in this run plus Δ: a head's query, key or value is computed
from its layer's input + Δ (that head only; with grouped-query attention a key / value belongs to a KV
head its query heads share), an MLP reads its usual input + Δ, the final residual at the metric's
position gets + Δ. Everything else sees the run without Δ. So with every component downstream of
the sender as receivers this is activation patching of the sender; with none it changes nothing.

A layer with receivers runs on two rows per variant: the run itself and the run with Δ added to the
layer's input (its attention output forced to the first row's, so its MLP reads the first row's
residual + Δ); each receiver's input is copied from the second row into the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mechscope.engine.addresses import Receiver, parse_head, parse_receiver
from mechscope.engine.attention import AttentionControl
from mechscope.engine.errors import Cancelled, PromptError
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.layer_replay import LayerCall
from mechscope.engine.metric import Metric
from mechscope.engine.passes import Passes
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.results import MetricInfo, PathPatchResult, SweepResult, check_direction
from mechscope.engine.sites import Site
from mechscope.engine.sweeps import EditHooks, base_pass, suffix_calls

ProgressCallback = Callable[[SweepResult], None]
SENDER_ROWS = 64  # about this many senders share one batch of a path sweep


def parallel_mlp(passes: Passes) -> bool:
    """Whether attention and MLP read the same layer input (GPT-NeoX's parallel residual)."""
    return bool(getattr(passes.adapter.config, "use_parallel_residual", False))


def downstream_receivers(passes: Passes, sender_layer: int) -> tuple[str, ...]:
    """Every component downstream of a head in `sender_layer`: each later head's query, key and value,
    each MLP from the sender's layer on (after it when the MLP runs in parallel with attention), and
    the final residual."""
    a = passes.adapter
    first_mlp = sender_layer + 1 if parallel_mlp(passes) else sender_layer
    heads = [f"L{layer}.H{head}.{w}" for layer in range(sender_layer + 1, a.n_layers)
             for head in range(a.n_heads) for w in "qkv"]
    return (*heads, *(f"L{layer}.mlp" for layer in range(first_mlp, a.n_layers)), "resid_final")


@dataclass
class _LayerReceivers:
    """What one layer lets Δ into: (q | k | v, head or KV head) inputs, and whether its MLP input."""

    inputs: set[tuple[str, int]] = field(default_factory=set)
    mlp: bool = False


def _checked_receivers(passes: Passes, sender_layer: int, receivers: Sequence[str]
                       ) -> tuple[dict[int, _LayerReceivers], bool]:
    """Receivers per layer (k / v as KV heads) and whether the final residual is one; ValueError
    naming a receiver that is out of range or not downstream of the sender."""
    a = passes.adapter
    group = a.n_heads // a.n_kv_heads
    layers: dict[int, _LayerReceivers] = {}
    final = False
    for text in receivers:
        receiver: Receiver = parse_receiver(text)
        if receiver.kind == "resid_final":
            final = True
            continue
        if not 0 <= receiver.layer < a.n_layers:
            raise ValueError(f"receiver {text}: layer {receiver.layer} is out of range 0..{a.n_layers - 1}")
        if receiver.kind == "mlp":
            first = sender_layer + 1 if parallel_mlp(passes) else sender_layer
            if receiver.layer < first:
                raise ValueError(f"receiver {text} is not downstream of the sender in layer {sender_layer}")
            layers.setdefault(receiver.layer, _LayerReceivers()).mlp = True
            continue
        assert receiver.head is not None  # q / k / v receivers name a head
        if not 0 <= receiver.head < a.n_heads:
            raise ValueError(f"receiver {text}: head {receiver.head} is out of range 0..{a.n_heads - 1}")
        if receiver.layer <= sender_layer:
            raise ValueError(f"receiver {text} is not after the sender's layer {sender_layer}")
        index = receiver.head if receiver.kind == "q" else receiver.head // group
        layers.setdefault(receiver.layer, _LayerReceivers()).inputs.add((receiver.kind, index))
    return layers, final


def sender_deltas(passes: Passes, layer: int, base_z: torch.Tensor, source_z: torch.Tensor,
                  heads: Sequence[int]) -> torch.Tensor:
    """Per head in `heads`, what `layer`'s attention adds to the residual with that head's output
    from the source minus what it adds in the base run: [len(heads), pos, d_model]. base_z /
    source_z: [1, pos, head, d_head]."""
    a = passes.adapter
    z = base_z.expand(len(heads) + 1, -1, -1, -1).clone()  # row 0: the base run
    for row, head in enumerate(heads, start=1):
        z[row, :, head] = source_z[0, :, head]
    out = a.o_proj(layer)(z.flatten(-2))  # [1 + heads, pos, d_model]
    post_norm = a.attn_post_norm(layer)
    if post_norm is not None:
        out = post_norm(out)
    return out[1:] - out[:1]


def _receiving_layer(passes: Passes, layer: int, call: LayerCall, hidden: torch.Tensor, delta: torch.Tensor,
                     receives: _LayerReceivers, delta_in_input: bool) -> torch.Tensor:
    """Run `layer` on rows `hidden` [row, pos, d_model] letting `delta` [row, pos, d_model] into its
    receivers only. `delta_in_input`: the layer is after the sender's (Δ is in its input); otherwise
    it is the sender's own layer, where Δ joins after attention (only its MLP can receive it)."""
    a = passes.adapter
    rows = hidden.shape[0]
    shifted = hidden + delta if delta_in_input else hidden
    both = torch.cat([hidden, shifted])  # [2 * row, pos, d_model]: the run, then the run with Δ
    hooks: list[Hook] = []
    if receives.inputs:
        inputs = sorted(receives.inputs)

        def let_in(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
            tensors = {"q": query, "k": key, "v": value}  # [2 * row, head | kv_head, pos, d_head]
            for which, index in inputs:
                tensors[which][:rows, index] = tensors[which][rows:, index]
            return query, key, value

        hooks.append(Hook("qkv", a.layer_module(layer, "attn"), let_in))
    if receives.mlp:
        def same_attention(x: torch.Tensor) -> torch.Tensor:  # [2 * row, pos, d_model]
            x[rows:] = x[:rows] if delta_in_input else x[:rows] + delta
            return x

        def mlp_with_delta(x: torch.Tensor) -> torch.Tensor:
            x[:rows] = x[rows:]
            return x

        hooks += Site("attn", layer).edit(a, same_attention)
        hooks += Site("mlp", layer).edit(a, mlp_with_delta)
    with installed(passes.align_hooks() + hooks):
        return call.call(a.layers[layer], both)[:rows]


def _path_run(passes: Passes, calls: Sequence[LayerCall], hidden: torch.Tensor, start: int, sender_layer: int,
              delta: torch.Tensor, layers: dict[int, _LayerReceivers], outer: list[Hook],
              should_stop: ShouldStop | None) -> torch.Tensor:
    """Layers start..N-1 from `hidden` [row, pos, d_model] (the input of `start`), Δ reaching
    `layers`' receivers; returns the last layer's output."""
    a = passes.adapter
    with installed(outer):
        for layer in range(start, a.n_layers):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            receives = layers.get(layer)
            if receives is None:
                with installed(passes.align_hooks()):
                    hidden = calls[layer].call(a.layers[layer], hidden)
            else:
                hidden = _receiving_layer(passes, layer, calls[layer], hidden, delta, receives,
                                          layer > sender_layer)
    return hidden


def _prepare(passes: Passes, clean: str, corrupt: str, metric: Metric | None, direction: str):
    check_direction(direction)
    if metric is None or not metric.measurable:
        raise PromptError("path patching needs a metric with a target token")
    if passes.adapter.post_ln:
        raise ValueError("path patching needs a pre-norm model (this one normalises after the residual add)")
    base_prompt, source_prompt = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    base_ids, _ = passes.prompt_ids(base_prompt)
    source_ids, _ = passes.prompt_ids(source_prompt)
    if source_ids.shape[1] != base_ids.shape[1]:
        raise PromptError(f"clean and corrupted prompts must have the same number of tokens for path "
                          f"patching ({base_ids.shape[1]} vs {source_ids.shape[1]})")
    info = passes.metric_info(metric, base_ids.shape[1])
    return base_ids, source_ids, info


def _metric_reader(passes: Passes, info: MetricInfo, clean_ids: torch.Tensor):
    """[row, d_model] final residual rows at the readout -> [row] metric (kl: from the clean run)."""
    reference = None
    if info.kind == "kl":
        reference = passes.logits(passes.clean(clean_ids).final[:, info.position])[0]  # [vocab]

    def metric_of(rows: torch.Tensor) -> torch.Tensor:
        return passes.metric_of_resid(rows, info, reference)

    return metric_of


def path_patch(passes: Passes, sender: str, receivers: Sequence[str], clean: str, corrupt: str, metric: Metric,
               direction: str = "noising", edit_hooks: EditHooks | None = None,
               should_stop: ShouldStop | None = None) -> PathPatchResult:
    """The metric when `sender`'s (`L<l>.H<h>`) change from the source run reaches only `receivers`
    (see the module docstring). noising: base = clean, source = corrupt; denoising: the reverse.
    `edit_hooks`: every pass runs under a fresh set of these intervention hooks."""
    started = time.perf_counter()
    sender_layer, sender_head = parse_head(sender)
    a = passes.adapter
    if not 0 <= sender_layer < a.n_layers or not 0 <= sender_head < a.n_heads:
        raise ValueError(f"sender {sender} is outside the model ({a.n_layers} layers x {a.n_heads} heads)")
    layers, final = _checked_receivers(passes, sender_layer, receivers)
    with torch.no_grad():
        base_ids, source_ids, info = _prepare(passes, clean, corrupt, metric, direction)
        readout = info.position
        metric_of = _metric_reader(passes, info, base_ids if direction == "noising" else source_ids)
        base = base_pass(passes, base_ids, edit_hooks, should_stop)
        base_z = passes.source_acts(base_ids, edit_hooks() if edit_hooks is not None else None).z[sender_layer]
        source = passes.source_acts(source_ids, edit_hooks() if edit_hooks is not None else None)
        delta = sender_deltas(passes, sender_layer, base_z, source.z[sender_layer], [sender_head])  # [1, pos, d]
        base_metric = float(metric_of(base.final[:, readout])[0])
        source_metric = float(metric_of(source.resid_post[-1][:, readout])[0])
        if not layers and not final:
            patched = base_metric
        else:
            start = min(layers) if layers else a.n_layers
            outer = edit_hooks() if edit_hooks is not None else []
            hidden = base.calls[start].hidden if start < a.n_layers else base.final
            out = _path_run(passes, base.calls, hidden, start, sender_layer, delta.to(hidden.device), layers,
                            outer, should_stop)
            row = out[:, readout]  # [1, d_model]
            if final:
                row = row + delta[:, readout].to(row.device)
            patched = float(metric_of(row)[0])
    return PathPatchResult(sender, tuple(receivers), base_metric, patched, source_metric,
                           time.perf_counter() - started)


def path_sweep(passes: Passes, receiver: str, clean: str, corrupt: str, metric: Metric,
               direction: str = "noising", on_progress: ProgressCallback | None = None,
               should_stop: ShouldStop | None = None, edit_hooks: EditHooks | None = None) -> SweepResult:
    """Each earlier head's path effect into one head's query, key or value (`L<l>.H<h>.q|k|v`): a
    [layer, head] grid of metric(path patched) - metric(base), NaN from the receiver's layer on.

    Each sender is a batch row (several sender layers per batch); nothing before the receiver's layer changes, so only
    the layers from there are run (from the base run's cached input), and only the positions from
    the first token where the prompts differ (the prefix's keys and values come from the base run)."""
    started = time.perf_counter()
    parsed = parse_receiver(receiver)
    if parsed.kind not in ("q", "k", "v"):
        raise ValueError(f"a path sweep's receiver is a head's query, key or value (L<l>.H<h>.q), got {receiver}")
    a = passes.adapter
    layers, _ = _checked_receivers(passes, -1, [receiver])
    target = parsed.layer
    with torch.no_grad():
        base_ids, source_ids, info = _prepare(passes, clean, corrupt, metric, direction)
        readout = info.position
        metric_of = _metric_reader(passes, info, base_ids if direction == "noising" else source_ids)
        base = base_pass(passes, base_ids, edit_hooks, should_stop)
        base_z = passes.source_acts(base_ids, edit_hooks() if edit_hooks is not None else None).z
        source = passes.source_acts(source_ids, edit_hooks() if edit_hooks is not None else None)
        base_metric = float(metric_of(base.final[:, readout])[0])
        source_metric = float(metric_of(source.resid_post[-1][:, readout])[0])
        values = np.full((a.n_layers, a.n_heads), np.nan, dtype=np.float32)

        def result(complete: bool) -> SweepResult:
            return SweepResult("head", values.copy(), base_metric, source_metric,
                               [f"L{layer}" for layer in range(a.n_layers)],
                               [f"H{head}" for head in range(a.n_heads)], complete,
                               time.perf_counter() - started)

        n_pos = base_ids.shape[1]
        differs = (base_ids[0] != source_ids[0]).nonzero()
        prefix = 0 if edit_hooks is not None else min(int(differs[0]) if len(differs) else n_pos, readout)
        calls, prefix_kv = suffix_calls(passes, base, prefix)
        heads = list(range(a.n_heads))
        per_batch = max(1, SENDER_ROWS // a.n_heads)  # sender layers per batch
        for first in range(0, target, per_batch):
            if should_stop is not None and should_stop():
                raise Cancelled("path sweep stopped")
            senders = range(first, min(first + per_batch, target))
            delta = torch.cat([sender_deltas(passes, layer, base_z[layer], source.z[layer], heads)
                               for layer in senders])  # [sender, pos, d_model], layer-major
            rows = delta.shape[0]
            hidden = base.calls[target].hidden[:, prefix:].expand(rows, -1, -1)  # [sender, suffix, d_model]
            outer = edit_hooks() if edit_hooks is not None else []
            outer += [Hook("attn", a.layer_module(index, "attn"), control=AttentionControl(prefix_kv=kv))
                      for index, kv in prefix_kv.items() if index >= target]
            out = _path_run(passes, calls, hidden, target, target - 1,
                            delta[:, prefix:].to(hidden.device), layers, outer, should_stop)
            effects = (metric_of(out[:, readout - prefix]) - base_metric).float().cpu().numpy()
            values[first:first + len(senders)] = effects.reshape(len(senders), a.n_heads)
            if on_progress is not None:
                on_progress(result(False))
        return result(True)
