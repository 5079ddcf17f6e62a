"""Predictions pane: top-k next tokens with probabilities, their change against the baseline, the metric."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rich.text import Text

from mechscope.engine.results import RunResult, normalised_effect
from mechscope.tui.widgets.plain import Plain, plain_title
from mechscope.tui.widgets.prompt_pane import show_token

METRIC_LABELS = {"logit_diff": "logit diff", "prob": "p(target)", "loss": "loss", "kl": "KL(clean‖run)"}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)  # [vocab]
    weights = np.exp(shifted)
    return weights / weights.sum()


def predictions_text(result: RunResult, intervened: bool, labels: Mapping[int, str] | None = None) -> Text:
    """The pane's text; without interventions there is no change column to show. `labels`: token id ->
    the text to show instead of its decoded text (bytes for a piece of a character)."""
    text = Text()
    kind = result.metric_info.kind if result.metric_info is not None else None
    if result.metric is not None and kind is not None:
        label = METRIC_LABELS.get(kind, kind)
        base = result.baseline.metric
        text.append(f"{label} ", style="bold")
        if intervened and base is not None:
            delta = result.metric - base
            text.append(f"Δ {delta:+.3f}\n", style="green" if delta >= 0 else "red")
            text.append(f"{base:+.3f} → {result.metric:+.3f}\n")
            if result.source_metric is not None:
                share = float(normalised_effect(delta, base, result.source_metric))
                text.append(f"patch source {result.source_metric:+.3f}\n", style="dim")
                text.append("normalised " + (f"{share:+.2f} of the gap\n" if np.isfinite(share)
                                             else "n/a (source = base)\n"))
        else:
            text.append(f"{result.metric:+.3f}\n")
    else:
        text.append("no metric: set a target\n", style="dim")
    baseline_probs = softmax(result.baseline.logits) if intervened else None
    for rank, token in enumerate(result.top, 1):
        shown = show_token((labels or {}).get(token.id, token.text))
        text.append(f"{shown[:10]:<10}", style="bold" if rank == 1 else "")
        text.append(f" {token.prob * 100:5.1f}%")
        if baseline_probs is not None:
            change = (token.prob - float(baseline_probs[token.id])) * 100
            style = "green" if change > 0.05 else ("red" if change < -0.05 else "dim")
            text.append(f" {change:+5.1f}", style=style)
        text.append("\n")
    text.rstrip()
    return text


class PredictionsPane(Plain):
    """Shows the latest RunResult; the app calls `show` from its RunFinished handler."""

    DEFAULT_CSS = """
    PredictionsPane { height: 1fr; border: round $panel; padding: 0 1; overflow-y: auto; }
    """

    def on_mount(self) -> None:
        self.border_title = "predictions"

    def show(self, result: RunResult, intervened: bool, labels: Mapping[int, str] | None = None) -> None:
        self.update(predictions_text(result, intervened, labels), layout=False)  # its size is set by CSS
        self.border_subtitle = "Δ vs no interventions" if intervened else ""
        self.border_title = "predictions"

    def mark_stale(self, why: str) -> None:
        """The numbers shown are not for the current inputs (a failed run, an empty prompt)."""
        self.border_title = plain_title(f"predictions ({why})")
