"""Runs, metrics and head-patching sweeps over a prompt set, batched with padding and attention masks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import numpy as np
import torch

from mechscope.engine.adapters import Adapter
from mechscope.engine.errors import PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import Intervention
from mechscope.engine.layer_replay import (
    LayerCall,
    kv_recorders,
    recorded_kv,
    take_rows,
)
from mechscope.engine.metric import SetMetricKind
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import SetRunResult, SetSweepResult, check_direction
from mechscope.engine.set_batches import (
    MAX_BATCH_ROWS,
    Batch,
    Padding,
    SetMetric,
    encode,
    forward,
    head_outputs,
    run_layers,
)
from mechscope.engine.set_edits import MeanRows, set_edit_hooks

CPU_BATCH_TOKENS = 640  # and on a CPU, tokens: a batch that stays in cache is 10-15% faster per token than 1,280
# Elsewhere, tokens per pass: an H200 ran the demo's 100-row sweep bound by kernel launches at 256 rows a pass.
ACCELERATOR_BATCH_TOKENS = 32_768
PASS_MEMORY_SHARE = 0.25  # of the accelerator's free memory, what one pass of a sweep may take
# What an accelerator computes in the time one layer call's fixed cost (kernel launches, hooks) takes:
# on an H200 about 1 ms a layer at a few hundred TFLOP/s. A pass's padding is worth cutting only past it.
ACCELERATOR_PASS_OVERHEAD_FLOPS = 2e11


def pass_variant_bytes(a: Adapter, suffix: int, prefix: int, element_size: int) -> int:
    """Bytes one (row, head) variant of a sweep pass needs, over-estimated: the base run's keys and values
    of its prefix for every later layer, its layers' cut masks and rotary tables, and one layer's work
    on its suffix (residual and MLP activations, attention scores and probabilities in float32)."""
    width = prefix + suffix
    kv = a.n_layers * 2 * a.n_kv_heads * a.d_head * prefix
    calls = a.n_layers * (suffix * width + 2 * suffix * a.d_head)
    layer = suffix * (8 * a.d_model + 3 * a.d_mlp) + 2 * a.n_heads * suffix * width * 4 // element_size
    return (kv + calls + layer) * element_size


def free_device_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on a CUDA device, counting what torch holds cached but unused."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def sweep_pass_variants(engine: ResidentModel, suffix: int, prefix: int, max_batch: int | None = None) -> int:
    """How many (row, head) variants one pass of a set sweep carries when its longest suffix (the
    positions it computes) is `suffix` and its prefix `prefix`: on a CPU at most MAX_BATCH_ROWS and
    CPU_BATCH_TOKENS tokens; on an accelerator up to ACCELERATOR_BATCH_TOKENS tokens within
    PASS_MEMORY_SHARE of its free memory; never more than `max_batch`."""
    if engine.device.type == "cpu":
        size = min(MAX_BATCH_ROWS, CPU_BATCH_TOKENS // suffix)
    else:
        size = ACCELERATOR_BATCH_TOKENS // suffix
        free = free_device_bytes(engine.device)
        if free is None:
            size = min(size, MAX_BATCH_ROWS)
        else:
            per_variant = pass_variant_bytes(engine.adapter, suffix, prefix, engine.dtype.itemsize)
            size = min(size, int(free * PASS_MEMORY_SHARE) // per_variant)
    if max_batch is not None:
        size = min(size, max_batch)
    return max(1, size)


def pass_overhead_tokens(engine: ResidentModel) -> int | None:
    """Tokens of one layer whose compute costs what a pass's fixed overhead does on an accelerator
    (None on a CPU, where passes are small and compute is all that counts)."""
    if engine.device.type == "cpu":
        return None
    a = engine.adapter
    layer_params = a.d_model * (2 * (a.n_heads + a.n_kv_heads) * a.d_head + 3 * a.d_mlp)
    return int(ACCELERATOR_PASS_OVERHEAD_FLOPS / (2 * layer_params))


def plan_passes(variant_starts: list[int], capacity: Callable[[int], int],
                overhead_tokens: int | None) -> list[tuple[int, int]]:
    """Cut variants sorted by their start into passes [begin, end). A pass computes every position from
    its first (smallest) start, so its later variants compute padding (positions before their own
    start). A pass holds at most capacity(its first start) variants and, with `overhead_tokens`,
    ends before its padding would pass them: beyond that a new pass costs less than the padding."""
    passes = []
    begin = 0
    while begin < len(variant_starts):
        first = variant_starts[begin]
        cap = max(1, capacity(first))
        end, padding = begin + 1, 0
        while end < len(variant_starts) and end - begin < cap:
            padding += variant_starts[end] - first
            if overhead_tokens is not None and padding > overhead_tokens:
                break
            end += 1
        passes.append((begin, end))
        begin = end
    return passes


def run_set(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff",
            interventions: Iterable[Intervention] = (), prompt: Literal["clean", "corrupted"] = "clean",
            padding: Padding = "left", vectors: Mapping[str, np.ndarray] | None = None,
            means: MeanRows = "clean") -> SetRunResult:
    """The metric on every row (target vs foil at the row's last token), with and without interventions
    (`vectors`: the steering vectors they may name; `means`: the rows' prompts mean ablation averages
    over, clean or corrupted)."""
    started = time.perf_counter()
    interventions = list(interventions)
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, kind)
        batch = encode(engine, pset.column(prompt), padding)
        base = metric.value(engine, forward(engine, batch, []).normed)
        hooks = set_edit_hooks(engine, pset, batch, interventions, padding, vectors, means)
        values = metric.value(engine, forward(engine, batch, hooks).normed) if hooks else base
    return SetRunResult(pset.name, kind, values.cpu().numpy().astype(np.float64),
                        base.cpu().numpy().astype(np.float64), time.perf_counter() - started)


def paired_batches(engine: ResidentModel, pset: PromptSet, direction: str, padding: Padding) -> tuple[Batch, Batch]:
    """(base, source) batches of a sweep: noising patches corrupted into clean, denoising the reverse."""
    check_direction(direction)
    for i, row in enumerate(pset.rows):
        if not row.corrupted:
            raise PromptError(f"row {i + 1}: a sweep needs a corrupted prompt")
    clean = encode(engine, pset.column("clean"), padding)
    corrupt = encode(engine, pset.column("corrupted"), padding)
    for i, (n_clean, n_corrupt) in enumerate(zip(clean.lengths, corrupt.lengths)):
        if n_clean != n_corrupt:
            raise PromptError(f"row {i + 1}: clean and corrupted prompts must have the same number of "
                              f"tokens for a sweep ({n_clean} vs {n_corrupt})")
    return (clean, corrupt) if direction == "noising" else (corrupt, clean)


def shared_prefixes(base: Batch, source: Batch) -> list[int]:
    """Per row, the padded index of the first position whose token differs between the base and
    source rows (at most the readout): the positions before it hold the same activations in both
    runs, so patching there changes nothing and a sweep computes only the positions from it on."""
    differs = (base.ids != source.ids) & base.mask.bool()  # [row, pos]
    starts = []
    for r in range(base.rows):
        where = differs[r].nonzero()
        readout = int(base.readout[r])
        starts.append(min(int(where[0]), readout) if len(where) else readout)
    return starts


def _rows_after(calls: list[LayerCall], index: torch.Tensor, start: int) -> list[LayerCall]:
    """Each layer's call cut to batch rows `index` and positions start.. . The hidden states stay
    views of every base row (a variant starts from its own hidden state, selected by the caller)."""
    rows = calls[0].hidden.shape[0]
    cut = [call.suffix(start) for call in calls]
    return [LayerCall(c.hidden, take_rows(c.args, index, rows), take_rows(c.kwargs, index, rows)) for c in cut]


def sweep_set(engine: ResidentModel, pset: PromptSet, kind: SetMetricKind = "logit_diff",
              direction: str = "noising", padding: Padding = "left",
              on_progress: Callable[[SetSweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              max_batch: int | None = None, source: Literal["prompts", "mean"] = "prompts") -> SetSweepResult:
    """Patch each head's output from the source rows into the base rows, every row at once: for each
    layer, rows x heads variants resume from the base run's residual at that layer.

    Only what can change is computed: a variant runs the layers from the patched one on, and only
    the positions from its row's first differing token on (`shared_prefixes`; with left padding the
    padding is before it), attending to the base run's keys and values for the earlier positions.
    Rows are batched in order of that position, so a batch's rows share most of their prefix; a
    batch holds as many variants as `sweep_pass_variants` allows (`max_batch`: at most that many) and,
    on an accelerator, ends where its padding would cost more than another pass (`plan_passes`).

    source "mean": a mean-ablation sweep instead: each head's output is replaced by its mean over
    every real position of the set's clean rows (the base rows are the clean prompts; `direction`
    is ignored and source_metric is NaN)."""
    started = time.perf_counter()
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    if source not in ("prompts", "mean"):
        raise ValueError(f"source must be prompts or mean, got {source!r}")
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, kind)
        if source == "mean":
            base_batch = encode(engine, pset.column("clean"), padding)
            rows = base_batch.rows
            real = base_batch.mask.bool()
            source_z = [z[real].mean(0).expand(*base_batch.ids.shape, -1)
                        for z in head_outputs(engine, base_batch)]  # [row, pos, head*d_head] per layer
            source_metric = torch.full((rows,), float("nan"))
            starts = list(base_batch.offsets)  # the mean differs at every real token
        else:
            base_batch, source_batch = paired_batches(engine, pset, direction, padding)
            rows = base_batch.rows
            source_z = head_outputs(engine, source_batch)
            source_metric = metric.value(engine, forward(engine, source_batch, []).normed)
            starts = shared_prefixes(base_batch, source_batch)
        controls, recorders = kv_recorders(a)
        base = forward(engine, base_batch, recorders, record_calls=True)
        base_metric = metric.value(engine, base.normed)
        kv = recorded_kv(controls)  # [row, kv_head, pos, d_head] x2 per layer
        per_row = np.full((rows, a.n_layers, n_heads), np.nan)

        def result(complete: bool) -> SetSweepResult:
            return SetSweepResult(pset.name, direction if source == "prompts" else "mean", per_row.copy(),
                                  base_metric.cpu().numpy().astype(np.float64),
                                  source_metric.cpu().numpy().astype(np.float64), complete,
                                  time.perf_counter() - started)

        # variants (row, head), rows in order of their first differing position, in batches
        order = sorted(range(rows), key=lambda r: starts[r])
        pairs = torch.tensor([(r, h) for r in order for h in range(n_heads)], device=engine.device)
        width = base_batch.ids.shape[1]
        variant_starts = [starts[r] for r in order for _ in range(n_heads)]
        passes = plan_passes(variant_starts,
                             lambda first: sweep_pass_variants(engine, width - first, first, max_batch),
                             pass_overhead_tokens(engine))
        chunks = []
        for begin, end in passes:
            index, heads = pairs[begin:end, 0], pairs[begin:end, 1]
            first = variant_starts[begin]  # the smallest start of the pass, so its most positions
            chunks.append((index, heads, first, _rows_after(base.calls, index, first)))
        for layer in range(a.n_layers):
            for index, heads, start, calls in chunks:
                src = source_z[layer].reshape(rows, -1, n_heads, d_head)[index, start:, heads]  # [n, suffix, d_head]

                def patch(module, args, kwargs, heads=heads, src=src):
                    x = args[0]  # [n, suffix, head*d_head]
                    z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [n, suffix, head, d_head]
                    z[torch.arange(len(heads)), :, heads] = src
                    return (z.view(x.shape), *args[1:]), kwargs

                hidden = base.calls[layer].hidden.index_select(0, index)[:, start:]  # [n, suffix, d_model]
                prefix_kv = None
                if start > 0:
                    prefix_kv = {later: (kv[later][0].index_select(0, index)[:, :, :start],
                                         kv[later][1].index_select(0, index)[:, :, :start])
                                 for later in range(layer, a.n_layers)}
                normed = run_layers(engine, calls, layer, hidden, base_batch.readout[index] - start,
                                    [Hook("pre", a.o_proj(layer), patch)], should_stop, prefix_kv)
                effect = metric.rows(index).value(engine, normed) - base_metric[index]
                per_row[index.cpu().numpy(), layer, heads.cpu().numpy()] = effect.cpu().numpy()
            if on_progress is not None:
                on_progress(result(False))
        return result(True)
