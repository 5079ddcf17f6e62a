"""Function vectors (Todd et al. 2024): heads' average indirect effect on an in-context task, the
summed mean output of the top heads, and its effect on zero-shot prompts as a steering vector."""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import torch

from mechscope.engine.detectors import head_writes
from mechscope.engine.errors import PromptError
from mechscope.engine.hooks import Hook
from mechscope.engine.interventions import SteeringVector
from mechscope.engine.layer_replay import LayerCall, kv_recorders, recorded_kv, take_rows
from mechscope.engine.prompt_sets import PromptRow, PromptSet, zero_shot_prompt
from mechscope.engine.protocol import ShouldStop
from mechscope.engine.resident import ResidentModel
from mechscope.engine.results import FunctionVectorResult
from mechscope.engine.set_batches import (
    MAX_BATCH_ROWS,
    Batch,
    SetMetric,
    encode,
    forward,
    run_layers,
)
from mechscope.engine.set_edits import set_edit_hooks
from mechscope.engine.unembedding import logits_of

MAX_TOP_HEADS = 256


def mean_head_outputs(engine: ResidentModel, batch: Batch) -> list[torch.Tensor]:
    """Per layer, every head's output z at each row's last token, averaged over the rows: [head*d_head]."""
    a = engine.adapter
    rows = torch.arange(batch.rows, device=batch.readout.device)
    means: list[torch.Tensor | None] = [None] * a.n_layers

    def keep(layer: int):
        def hook(module, args, kwargs):
            means[layer] = args[0][rows, batch.readout].float().mean(0)  # [head*d_head]
        return hook

    forward(engine, batch, [Hook("pre", a.o_proj(layer), keep(layer)) for layer in range(a.n_layers)])
    return cast(list[torch.Tensor], means)


def average_indirect_effects(engine: ResidentModel, batch: Batch, metric: SetMetric, mean_z: list[torch.Tensor],
                             should_stop: ShouldStop | None = None,
                             max_batch: int = MAX_BATCH_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """([layer, head] AIE, [row] base metric): each head's output at the last token of every row of
    `batch` (left-padded) set to `mean_z`, the metric's mean change. Only the last position is
    recomputed, from the patched layer on, attending to the base run's keys and values."""
    a = engine.adapter
    n_heads, d_head = a.n_heads, a.d_head
    rows = batch.rows
    controls, recorders = kv_recorders(a)
    base = forward(engine, batch, recorders, record_calls=True)
    base_metric = metric.value(engine, base.normed)  # [row]
    kv = recorded_kv(controls)  # [row, kv_head, pos, d_head] x2 per layer
    start = batch.ids.shape[1] - 1  # left padding: every row's last token is the batch's last position
    if any(int(r) != start for r in batch.readout):
        raise ValueError("average indirect effects need a left-padded batch")
    suffix = [call.suffix(start) for call in base.calls]
    effects = torch.zeros(rows, a.n_layers, n_heads)
    pairs = torch.tensor([(r, h) for r in range(rows) for h in range(n_heads)], device=engine.device)
    step = max(1, max_batch)
    for layer in range(a.n_layers):
        for begin in range(0, len(pairs), step):
            index, heads = pairs[begin:begin + step, 0], pairs[begin:begin + step, 1]
            calls = [LayerCall(c.hidden, take_rows(c.args, index, rows), take_rows(c.kwargs, index, rows))
                     for c in suffix]
            value = mean_z[layer].view(n_heads, d_head)[heads]  # [n, d_head]

            def patch(module, args, kwargs, heads=heads, value=value):
                x = args[0]  # [n, 1, head*d_head]
                z = x.view(*x.shape[:-1], n_heads, d_head).clone()  # [n, 1, head, d_head]
                z[torch.arange(len(heads)), 0, heads] = value.to(z.dtype)
                return (z.view(x.shape), *args[1:]), kwargs

            hidden = base.calls[layer].hidden.index_select(0, index)[:, start:]  # [n, 1, d_model]
            prefix_kv = None if start == 0 else {
                later: (kv[later][0].index_select(0, index)[:, :, :start],
                        kv[later][1].index_select(0, index)[:, :, :start]) for later in range(layer, a.n_layers)}
            normed = run_layers(engine, calls, layer, hidden, torch.zeros_like(index),
                                [Hook("pre", a.o_proj(layer), patch)], should_stop, prefix_kv)
            change = metric.rows(index).value(engine, normed) - base_metric[index]
            effects[index.cpu(), layer, heads.cpu()] = change.float().cpu()
    return effects.mean(0).double().numpy(), base_metric.double().cpu().numpy()


def top_heads(aie: np.ndarray, k: int) -> tuple[tuple[int, int], ...]:
    """The k heads of largest AIE, (layer, head), largest first."""
    order = np.argsort(-aie.ravel(), kind="stable")[:k]
    return tuple((int(i // aie.shape[1]), int(i % aie.shape[1])) for i in order)


def summed_outputs(engine: ResidentModel, mean_z: list[torch.Tensor], heads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """The sum of the heads' mean outputs written to the residual (z through the output projection): [d_model]."""
    total = torch.zeros(engine.adapter.d_model, dtype=torch.float32, device=engine.device)
    for layer, head in heads:
        z = mean_z[layer].to(engine.dtype)[None]  # [1, head*d_head]
        total += head_writes(engine, layer, z)[head, 0].float()
    return total


def zero_shot_accuracy(engine: ResidentModel, prompts: PromptSet, metric: SetMetric, vector: np.ndarray | None,
                       layer: int, coeff: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """([row] top-1 == target as 0/1, [row] target probability) on `prompts`, with `coeff` x `vector`
    added to the residual entering `layer` at the last token (none: `vector` None)."""
    batch = encode(engine, prompts.column("clean"))
    hooks = [] if vector is None else set_edit_hooks(
        engine, prompts, batch, [SteeringVector(layer, name, coeff, positions="last")], vectors={name: vector})
    logits = logits_of(engine.adapter, forward(engine, batch, hooks).normed)  # [row, vocab]
    correct = (logits.argmax(-1) == metric.target).double()
    prob = torch.softmax(logits, -1).gather(1, metric.target[:, None])[:, 0].double()
    return correct.cpu().numpy(), prob.cpu().numpy()


def function_vector(engine: ResidentModel, pset: PromptSet, layer: int, n_heads: int = 10, coeff: float = 1.0,
                    name: str = "fv", should_stop: ShouldStop | None = None,
                    max_batch: int = MAX_BATCH_ROWS) -> FunctionVectorResult:
    """The function vector of `pset`'s task (rows: clean in-context prompts, corrupted the same with
    shuffled labels, target the answer): see `FunctionVectorResult`. The zero-shot prompts are each
    row's last line (`zero_shot_prompt`). Registering it as a steering vector is the caller's."""
    started = time.perf_counter()
    a = engine.adapter
    if not 0 <= layer < a.n_layers:
        raise PromptError(f"layer {layer} is out of range 0..{a.n_layers - 1}")
    if not 1 <= n_heads <= min(MAX_TOP_HEADS, a.n_layers * a.n_heads):
        raise PromptError(f"top heads must be 1..{min(MAX_TOP_HEADS, a.n_layers * a.n_heads)}, got {n_heads}")
    for i, row in enumerate(pset.rows):
        if not row.corrupted:
            raise PromptError(f"row {i + 1}: a function vector needs the shuffled-label prompt as the corrupted one")
    with engine.guard(), torch.no_grad():
        metric = SetMetric.of(engine, pset, "prob")
        mean_z = mean_head_outputs(engine, encode(engine, pset.column("clean")))
        aie, base_prob = average_indirect_effects(engine, encode(engine, pset.column("corrupted")), metric, mean_z,
                                                  should_stop, max_batch)
        heads = top_heads(aie, n_heads)
        vector = summed_outputs(engine, mean_z, heads).cpu().numpy()
        zero = PromptSet(f"{pset.name} zero-shot",
                         tuple(PromptRow(zero_shot_prompt(row.clean), "", row.target) for row in pset.rows))
        correct_without, prob_without = zero_shot_accuracy(engine, zero, metric, None, layer, coeff, name)
        correct_with, prob_with = zero_shot_accuracy(engine, zero, metric, vector, layer, coeff, name)
    return FunctionVectorResult(pset.name, name, layer, float(coeff), aie, heads, vector.astype(np.float32),
                                base_prob, correct_without, correct_with, prob_without, prob_with,
                                time.perf_counter() - started)
