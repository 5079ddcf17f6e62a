"""How far a recomputed outcome may be from a recorded one, and the comparisons handlers share.

Tolerances depend on the dtype and device of both the recording and the replay (the looser applies):

  dtype / device        prob_atol  metric_atol  metric_rtol
  float32 / float64 CPU   1e-4       1e-3         1e-4
  float32 on a GPU        1e-3       1e-2         1e-3     (TF32 matmuls, other kernels)
  float16                 2e-2       1e-1         1e-2
  bfloat16 or unknown     5e-2       2.5e-1       2e-2     (8-bit mantissa; also quantized models)

The same numbers apply at every position; `Tolerance` can be passed explicitly to override them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechscope.engine.results import normalised_effect


@dataclass(frozen=True)
class Tolerance:
    """How far a recomputed outcome may be from the recorded one and still match."""

    prob_atol: float
    metric_atol: float
    metric_rtol: float
    label: str = ""

    def metric_close(self, recorded: float | None, recomputed: float | None) -> bool:
        if recorded is None or recomputed is None:
            return recorded is None and recomputed is None
        if not math.isfinite(recomputed):
            return False
        return abs(recorded - recomputed) <= self.metric_atol + self.metric_rtol * abs(recorded)

    def looser(self, other: Tolerance) -> Tolerance:
        if (other.prob_atol, other.metric_atol) > (self.prob_atol, self.metric_atol):
            return other
        return self

    def describe(self) -> str:
        return (f"probabilities within {self.prob_atol:g}, metric within {self.metric_atol:g} "
                f"+ {self.metric_rtol:g}x|value| ({self.label})")


TOLERANCES: dict[str, Tolerance] = {
    "float32-cpu": Tolerance(1e-4, 1e-3, 1e-4, "float32 on CPU"),
    "float32-accelerator": Tolerance(1e-3, 1e-2, 1e-3, "float32 on a GPU"),
    "float16": Tolerance(2e-2, 1e-1, 1e-2, "float16"),
    "bfloat16": Tolerance(5e-2, 2.5e-1, 2e-2, "bfloat16 or quantized"),
}


def tolerance_for(device: str | None, dtype: str | None) -> Tolerance:
    """The tolerance for outcomes computed on `device` in `dtype` (as ModelInfo spells them)."""
    dtype = (dtype or "").removeprefix("torch.")
    device = (device or "cpu").split(":")[0]
    if dtype in ("float32", "float64"):
        return TOLERANCES["float32-cpu" if device == "cpu" else "float32-accelerator"]
    if dtype == "float16":
        return TOLERANCES["float16"]
    return TOLERANCES["bfloat16"]


def compare_outcomes(recorded: dict, recomputed: dict, tolerance: Tolerance) -> list[str]:
    """Reasons a recomputed run outcome (top-k and metrics) does not match the recorded one.

    Top-k token ids must be identical rank by rank, except a near-tie: two tokens whose probabilities
    differ by less than the probability tolerance may swap ranks (or swap across the k-th boundary).
    """
    problems = []
    rec_ids, new_ids = recorded["top_ids"], recomputed["top_ids"]
    rec_probs, new_probs = recorded["top_probs"], recomputed["top_probs"]
    if len(rec_ids) != len(new_ids):
        problems.append(f"top-k has {len(new_ids)} tokens, recorded {len(rec_ids)}")
    else:
        for rank, (old, new) in enumerate(zip(rec_probs, new_probs), 1):
            if abs(old - new) > tolerance.prob_atol:
                problems.append(f"p at rank {rank} {old:.6f} -> {new:.6f}")
                break
        for rank, (old_id, new_id) in enumerate(zip(rec_ids, new_ids)):
            if old_id != new_id and not _near_tie(rank, rec_ids, rec_probs, new_ids, new_probs,
                                                  tolerance.prob_atol):
                problems.append(f"token at rank {rank + 1} {recorded['top_tokens'][rank]!r} ({old_id}) "
                                f"-> {recomputed['top_tokens'][rank]!r} ({new_id})")
                break
    for key, label in (("metric", "metric"), ("baseline_metric", "baseline metric"),
                       ("source_metric", "source metric")):
        if key == "source_metric" and key not in recorded:  # recorded before runs kept it
            continue
        problems += metric_problems(label, recorded.get(key), recomputed.get(key), tolerance)
    return problems


def _near_tie(rank: int, rec_ids: list[int], rec_probs: list[float], new_ids: list[int],
              new_probs: list[float], atol: float) -> bool:
    """Whether the recorded token at `rank` moved only because it is tied with its neighbours."""
    old_id, old_p = rec_ids[rank], rec_probs[rank]
    if old_id in new_ids:
        return abs(new_probs[new_ids.index(old_id)] - old_p) <= atol and abs(new_probs[rank] - old_p) <= atol
    # fell out of the top-k: only a tie with the last kept token explains that
    return abs(new_probs[-1] - old_p) <= atol


def metric_problems(label: str, recorded: float | None, recomputed: float | None,
                    tolerance: Tolerance) -> list[str]:
    """`["metric +1.000000 -> +1.500000"]` when the two differ by more than the metric tolerance."""
    if tolerance.metric_close(recorded, recomputed):
        return []
    shown = [("none" if v is None else f"{v:+.6f}") for v in (recorded, recomputed)]
    return [f"{label} {shown[0]} -> {shown[1]}"]


def list_problems(label: str, recorded: Sequence[float], recomputed: Sequence[float],
                  tolerance: Tolerance) -> list[str]:
    """How a per-row list of metrics differs (row counts, then the first row out of tolerance)."""
    old, new = [float(v) for v in recorded], [float(v) for v in recomputed]
    if len(new) != len(old):
        return [f"{label}: {len(new)} rows, recorded {len(old)}"]
    off = [i for i, (a, b) in enumerate(zip(old, new)) if not tolerance.metric_close(a, b)]
    if not off:
        return []
    return [f"{label}: {len(off)} row(s) differ, e.g. row {off[0] + 1} "
            f"{old[off[0]]:+.6f} -> {new[off[0]]:+.6f}"]


def matrix_problems(recorded: Any, values: Any, tolerance: Tolerance,
                    cell: str = "[{row}, {col}]", label: str = "") -> list[str]:
    """How a recomputed matrix differs from the recorded one (cells the recording finished, i.e.
    finite, only); `cell` names a cell from `row` and `col`."""
    recorded = np.asarray(recorded, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    prefix = f"{label}: " if label else ""
    if values.shape != recorded.shape:
        return [f"{prefix}shape {list(recorded.shape)} -> {list(values.shape)}"]
    allowed = tolerance.metric_atol + tolerance.metric_rtol * np.abs(recorded)
    off = np.isfinite(recorded) & ~(np.abs(values - recorded) <= allowed)
    if not off.any():
        return []
    index = tuple(int(i) for i in np.argwhere(off)[0])
    where = cell.format(row=index[0], col=index[1]) if len(index) == 2 else str(list(index))
    return [f"{prefix}{int(off.sum())} cell(s) differ, e.g. {where} "
            f"{recorded[index]:+.6f} -> {values[index]:+.6f}"]


def format_sweep(values: Any, base_metric: float, source_metric: float | None = None) -> str:
    """`base +1.2345; largest effect -0.8123 at [9, 3]` (ignores cells a cancelled sweep left as nan),
    then `, -0.52 of the gap` when the source run's metric is known."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(values), values, 0.0)
    if finite.size == 0:
        return f"base {base_metric:+.4f}; empty"
    row, col = np.unravel_index(int(np.argmax(np.abs(finite))), finite.shape)
    text = f"base {base_metric:+.4f}; largest effect {finite[row, col]:+.4f} at [{row}, {col}]"
    if source_metric is not None:
        share = float(normalised_effect(finite[row, col], base_metric, source_metric))
        if np.isfinite(share):
            text += f", {share:+.2f} of the gap"
    return text


def format_rows(values: Sequence[float]) -> str:
    """`2 rows: mean +0.1234 ± 0.0100`."""
    v = np.asarray(values, dtype=np.float64)
    return f"{len(v)} rows: mean {v.mean():+.4f} ± {v.std():.4f}" if len(v) else "0 rows"
