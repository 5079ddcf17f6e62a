"""The predictions pane's text against a pinned result instead of against "no interventions"."""

from __future__ import annotations

from rich.text import Text

from mechscope.engine.results import RunResult
from mechscope.tui.widgets.predictions import METRIC_LABELS
from mechscope.tui.widgets.prompt_pane import show_token
from mechscope.workbench.pin import PinDeltas


def pinned_text(result: RunResult, deltas: PinDeltas) -> Text:
    """Metric Δ and each top token's probability change, both against the pin (labelled PIN)."""
    text = Text()
    kind = result.metric_info.kind if result.metric_info is not None else None
    if result.metric is not None and kind is not None:
        text.append(f"{METRIC_LABELS.get(kind, kind)} ", style="bold")
        if deltas.metric is not None and deltas.pinned_metric is not None:
            text.append(f"Δpin {deltas.metric:+.3f}\n", style="green" if deltas.metric >= 0 else "red")
            text.append(f"pin {deltas.pinned_metric:+.3f} → {result.metric:+.3f}\n")
        else:
            text.append(f"{result.metric:+.3f} (pin has another metric)\n")
    else:
        text.append("no metric: set a target\n", style="dim")
    if not deltas.same_prompt:
        text.append("pin is another prompt\n", style="yellow")
    for rank, (token, change) in enumerate(zip(result.top, deltas.probs, strict=True), 1):
        text.append(f"{show_token(token.text)[:10]:<10}", style="bold" if rank == 1 else "")
        text.append(f" {token.prob * 100:5.1f}%")
        change *= 100
        style = "green" if change > 0.05 else ("red" if change < -0.05 else "dim")
        text.append(f" {change:+5.1f}", style=style)
        text.append("\n")
    text.rstrip()
    return text
