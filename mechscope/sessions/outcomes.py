"""Outcome summaries shared by recording, replay and exported scripts.

The `format_*` and `outcome_from_result` functions are copied verbatim into exported scripts
(`mechscope export`), so they must stay self-contained: only builtins and `np`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def outcome_from_result(result: Any) -> dict[str, Any]:
    """The part of a RunResult a session records and replay compares: top-k and metrics."""
    return {
        "top_ids": [int(tok.id) for tok in result.top],
        "top_tokens": [str(tok.text) for tok in result.top],
        "top_probs": [float(tok.prob) for tok in result.top],
        "metric": None if result.metric is None else float(result.metric),
        "baseline_metric": None if result.baseline.metric is None else float(result.baseline.metric),
    }


def format_outcome(outcome: dict, n_top: int = 3) -> str:
    """`' Mary' 0.4123, ' John' 0.2011, ' the' 0.1000; metric +1.2345`."""
    tops = ", ".join(f"{text!r} {prob:.4f}" for text, prob in
                     zip(outcome["top_tokens"][:n_top], outcome["top_probs"][:n_top]))
    if outcome.get("metric") is None:
        return tops
    return f"{tops}; metric {outcome['metric']:+.4f}"


def format_generation(token_ids: list, tokens: list) -> str:
    """`12 tokens ' Mary. The cat'`."""
    return f"{len(token_ids)} tokens {''.join(tokens)!r}"


def format_sweep(values: np.ndarray, base_metric: float) -> str:
    """`base +1.2345; largest effect -0.8123 at [9, 3]` (ignores cells a cancelled sweep left as nan)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(values), values, 0.0)
    if finite.size == 0:
        return f"base {base_metric:+.4f}; empty"
    row, col = np.unravel_index(int(np.argmax(np.abs(finite))), finite.shape)
    return f"base {base_metric:+.4f}; largest effect {finite[row, col]:+.4f} at [{row}, {col}]"
