"""The features tab's attribution table: the features that move the metric, ranked by their AtP estimate, with exact ablations, direct effects and the SAE's error node."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mechscope.engine.features.results import FeatureAttribution
from mechscope.engine.metric import METRIC_TITLES, Metric
from mechscope.tui.widgets.plain import Plain
from mechscope.tui.widgets.prompt_pane import show_token


def _number(value: float) -> str:
    return f"{value:+9.4f}" if math.isfinite(value) else f"{'·':>9}"


def metric_label(metric: Metric) -> str:
    """`logit diff ' Mary' − ' John'`, `prob ' Mary'`, `KL`."""
    title = METRIC_TITLES[metric.kind]
    if metric.kind == "logit_diff":
        return f"{title} {metric.target!r} − {metric.foil!r}"
    return title if metric.kind == "kl" else f"{title} {metric.target!r}"


def agreement(result: FeatureAttribution) -> str:
    """How the AtP estimates of the verified candidates compare with their exact values."""
    done = np.isfinite(result.exact)
    if done.sum() < 2:
        return ""
    estimate, exact = result.estimates[done].astype(np.float64), result.exact[done].astype(np.float64)
    spread = float(np.std(estimate) * np.std(exact))
    corr = float(np.mean((estimate - estimate.mean()) * (exact - exact.mean())) / spread) if spread > 0 else math.nan
    return (f"AtP vs exact over the {int(done.sum())} verified: correlation {corr:.3f}, "
            f"mean |AtP − exact| {float(np.mean(np.abs(estimate - exact))):.4f}")


def attribution_text(result: FeatureAttribution, metric: Metric, stale: str | None = None, shown: int = 20,
                     selected: tuple[int, int] | None = None) -> Text:
    """Header (what ran and what each column is), the ranked rows (the one whose (token, feature) is
    selected in the features tab marked), then the error node's row."""
    tokens = result.tokens
    readout = result.metric_position
    text = Text()
    text.append(f"feature attribution · {result.site} · {metric_label(metric)} at token {readout} "
                f"{show_token(tokens[readout])!r} · base metric {result.base_metric:+.4f} · "
                f"{result.n_active} active (token, feature) pairs"
                + ("" if result.include_first else " after token 0 (the attention sink, left out)") + "\n",
                style="bold")
    if stale:
        text.append(f"stale: {stale} (run it again)\n", style="yellow")
    direct = result.direct_label or "none for this metric"
    text.append(f"AtP = −a·(W_dec·∂metric/∂x), the first-order Δ metric if ablated · exact = Δ metric with the "
                f"feature ablated there, error kept ({result.verified} verified) · direct = a·W_dec read on "
                f"{direct} through the final norm frozen at token {readout}\n", style="dim")
    text.append(f"{'#':>4} {'feature':>8} {'token':<16} {'act':>8} {'AtP':>9} {'exact Δ':>9} {'direct':>9}\n",
                style="bold")
    for n in range(min(shown, len(result.features))):
        pos = int(result.positions[n])
        token = f"{pos} {show_token(tokens[pos])}"[:16]
        mark = selected == (pos, int(result.features[n]))
        text.append(f"{'▸' if mark else ' '} {n + 1:>2} {int(result.features[n]):>8} {token:<16} "
                    f"{float(result.activations[n]):8.3f} {_number(float(result.estimates[n]))} "
                    f"{_number(float(result.exact[n]))} {_number(float(result.direct[n]))}\n",
                    style="reverse" if mark else "")
    if not len(result.features):
        text.append("  no feature fires on this prompt\n")
    errors = result.error_estimates.astype(np.float64)
    top = np.argsort(-np.abs(errors), kind="stable")[:3]
    where = ", ".join(f"{int(p)} {show_token(tokens[int(p)])!r} {errors[p]:+.4f}" for p in top)
    text.append(f"{'':>4} {'error':>8} {'all tokens':<16} {'':>8} {_number(float(errors.sum()))} "
                f"{_number(result.error_exact)} {_number(result.error_direct)}\n", style="magenta")
    text.append(f"error node e = x − x̂ (exact Δ: x replaced by x̂ at every token); AtP by token, largest: "
                f"{where}\n", style="dim")
    line = agreement(result)
    if line:
        text.append(line + "\n", style="dim")
    return text


class FeatureAttributionView(VerticalScroll):
    """Hidden until an attribution is asked for; then its table (scrollable) under the features tab's
    summary and strip, taking half of the tab."""

    DEFAULT_CSS = """
    FeatureAttributionView { height: 1fr; display: none; }
    FeatureAttributionView #feature-attribution-table { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Plain("", id="feature-attribution-table")

    @property
    def text(self) -> str:
        """What the table says, as plain text."""
        rendered = self.query_one("#feature-attribution-table", Static).render()
        return getattr(rendered, "plain", str(rendered))

    def show_message(self, text: str) -> None:
        self.display = True
        self.query_one("#feature-attribution-table", Static).update(text)

    def show(self, result: FeatureAttribution, metric: Metric, stale: str | None,
             selected: tuple[int, int] | None = None) -> None:
        self.display = True
        self.query_one("#feature-attribution-table", Static).update(
            attribution_text(result, metric, stale, selected=selected))
