"""Sweeps, attributions and logit-lens tables as CSV, the sweep matrix as safetensors: pure functions
over the engine's plain results (the `export-sweep` command is `mechscope/cli/export_sweep.py`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from mechscope.engine.results import SweepKind, SweepResult, normalised_effect

if TYPE_CHECKING:
    from mechscope.engine.results import Attribution, LogitLens, SetSweepResult

EFFECTS = ("delta", "normalised", "both")  # which effect columns an exported sweep holds
HEAD_GRIDS = ("head", "atp", "set")  # kinds whose columns are heads (and every "estimate-<method>")


def _number(value: float) -> str:
    """A cell: full float32 precision, empty for a cell the sweep did not reach."""
    return "" if not math.isfinite(value) else repr(float(value))


def _row_label(kind: str, row: int, labels: Sequence[str]) -> str:
    return str(labels[row]) if row < len(labels) and labels[row] else f"L{row}"


def sweep_to_csv(result: SweepResult, *, direction: str = "noising", tokens: list[str] | None = None,
                 effect: str = "both") -> str:
    """One row per cell: layer, head or position, the metric change (`delta_metric`, patched - base)
    and / or its share of the gap (`normalised_effect`, (patched - base) / (source - base); `effect`
    picks: delta, normalised or both); unreached cells are empty. With the prompt's `tokens`, a
    position's label names its token as the screen does (`L0 pos 9: John`)."""
    check_effect(effect)
    values = np.asarray(result.values, dtype=np.float64)  # head grids: [layer, head]; others: [layer, pos]
    shares = normalised_effect(values, result.base_metric, result.source_metric)  # same shape
    column = "head" if result.kind in HEAD_GRIDS or result.kind.startswith("estimate") else "position"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    effects = {"delta": ["delta_metric"], "normalised": ["normalised_effect"],
               "both": ["delta_metric", "normalised_effect"]}[effect]
    writer.writerow(["kind", "direction", "layer", column, "label", *effects, "base_metric", "source_metric"])
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            if column == "head":
                label = f"L{row}.H{col}"
            else:
                token = f": {tokens[col]}" if tokens is not None and col < len(tokens) else ""
                label = f"{_row_label(result.kind, row, result.row_labels)} pos {col}{token}"
            cells = {"delta_metric": values[row, col], "normalised_effect": shares[row, col]}
            writer.writerow([result.kind, direction, row, col, label, *(_number(cells[e]) for e in effects),
                             _number(result.base_metric), _number(result.source_metric)])
    return out.getvalue()


def check_effect(effect: str) -> None:
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {', '.join(EFFECTS)}, got {effect!r}")


def attribution_to_csv(attribution: Attribution) -> str:
    """Every part of the direct logit attribution (they add up to `total`, the last row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["component", "layer", "head", "value"])
    writer.writerow(["embed", "", "", _number(attribution.embed)])
    heads = np.asarray(attribution.heads, dtype=np.float64)  # [layer, head]
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            writer.writerow([f"L{layer}.H{head}", layer, head, _number(heads[layer, head])])
        writer.writerow([f"L{layer}.attn_bias", layer, "", _number(attribution.attn_bias[layer])])
        writer.writerow([f"L{layer}.mlp", layer, "", _number(attribution.mlp[layer])])
    if attribution.resid_edits is not None:  # [layer]
        for layer, value in enumerate(np.asarray(attribution.resid_edits, dtype=np.float64)):
            writer.writerow([f"L{layer}.resid_edits", layer, "", _number(value)])
    writer.writerow(["final_bias", "", "", _number(attribution.final_bias)])
    writer.writerow(["total", "", "", _number(attribution.total)])
    return out.getvalue()


def lens_to_csv(lens: LogitLens) -> str:
    """One row per layer and rank: the decoded token and its probability (and the target's rank)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "rank", "token_id", "token", "prob", "target_rank", "target_prob"])
    probs = np.asarray(lens.top_probs, dtype=np.float64)  # [layer, k]
    for layer in range(probs.shape[0]):
        target_rank = "" if lens.target_rank is None else int(lens.target_rank[layer])
        target_prob = "" if lens.target_prob is None else _number(lens.target_prob[layer])
        for rank in range(probs.shape[1]):
            writer.writerow([layer, rank, int(lens.top_ids[layer, rank]), lens.top_tokens[layer][rank],
                             _number(probs[layer, rank]), target_rank, target_prob])
    return out.getvalue()


def sweep_to_safetensors(result: SweepResult, path: str | Path, *, direction: str = "noising",
                         effect: str = "both") -> None:
    """The matrix as `values` [rows, cols] float32 (Δ metric) and / or `normalised` (its share of the gap
    source - base; `effect`: delta, normalised or both), with kind, direction and labels as metadata.
    A path that cannot be written raises OSError (serialised first, then written as plain bytes)."""
    from safetensors.numpy import save

    check_effect(effect)
    values = np.ascontiguousarray(np.asarray(result.values, dtype=np.float32))  # [rows, cols]
    shares = np.ascontiguousarray(normalised_effect(values, result.base_metric, result.source_metric)
                                  .astype(np.float32))  # [rows, cols]
    tensors = {"delta": {"values": values}, "normalised": {"normalised": shares},
               "both": {"values": values, "normalised": shares}}[effect]
    metadata = {"kind": result.kind, "direction": direction, "base_metric": repr(float(result.base_metric)),
                "source_metric": repr(float(result.source_metric)),
                "row_labels": ",".join(map(str, result.row_labels)),
                "col_labels": ",".join(map(str, result.col_labels))}
    Path(path).write_bytes(save(tensors, metadata=metadata))


def set_sweep_grid(result: SetSweepResult) -> SweepResult:
    """A set sweep as the grid the set tab shows and `export-sweep` writes: the mean Δ over the rows
    per head ([layer, head]), against the mean base and source metrics."""
    return SweepResult(kind=cast(SweepKind, "set"), values=np.asarray(result.mean, dtype=np.float64),
                       base_metric=float(np.mean(result.base_metric)),
                       source_metric=float(np.mean(result.source_metric)),
                       row_labels=[], col_labels=[], complete=result.complete, seconds=result.seconds)


def default_name(what: str, kind: str, fmt: str) -> str:
    """`sweep-head-noising.csv`, `attribution.csv`… in the current directory."""
    return f"{what}{'-' + kind if kind else ''}.{fmt}"


def write_text(path: str | Path, text: str) -> Path:
    target = Path(path).expanduser()
    target.write_text(text, encoding="utf-8")
    return target
