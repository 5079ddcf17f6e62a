"""The features tab: the strongest SAE features at the prompt's last token and a token x feature strip."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from mechscope.engine.results import FeatureActivations
from mechscope.tui.commands import palette_title
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.prompt_pane import show_token


def features_text(result: FeatureActivations, folder: str, shown: int = 8) -> Text:
    """What the SAE is, what it leaves unexplained, and the last token's strongest features."""
    last = len(result.tokens) - 1
    error = float(result.error_norm[last])
    norm = float(result.site_norm[last])
    text = Text()
    text.append(f"SAE {folder} · {result.site} · {result.d_sae} features · digest {result.sae_digest[:12]}\n",
                style="bold")
    text.append(f"clean prompt, no interventions · last token {show_token(result.tokens[last])!r}: "
                f"L0 {int(result.l0[last])}, error |x - x̂| {error:.3f} of |x| {norm:.3f}"
                f" ({error / norm:.0%})\n" if norm > 0 else "\n", style="dim")
    fired = [(int(f), float(v)) for f, v in zip(result.ids[last], result.values[last]) if f >= 0 and v > 0]
    if not fired:
        text.append("no feature fires at the last token\n")
    for feature, value in fired[:shown]:
        text.append(f"  feature {feature:<7} {value:8.3f}\n")
    return text


class FeaturesView(Vertical):
    """Summary above, the strip (rows: features strongest anywhere in the prompt; columns: tokens) below."""

    DEFAULT_CSS = """
    FeaturesView #features-summary { height: auto; max-height: 12; }
    FeaturesView Heatmap { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(self.empty_text(), id="features-summary")
        yield Heatmap(cell_width=3, diverging=False, id="features-strip")

    @staticmethod
    def empty_text() -> str:
        return (f"no SAE chosen: the palette's '{palette_title('sae_folder')}' reads one from a folder "
                "(SAELens, sparsify or Gemma Scope layout); `mechscope features train` makes one")

    def show_message(self, text: str) -> None:
        self.query_one("#features-summary", Static).update(text)

    def show(self, result: FeatureActivations, folder: str, strip: tuple[list[int], np.ndarray] | None) -> None:
        self.query_one("#features-summary", Static).update(features_text(result, folder))
        if strip is not None and strip[0]:
            features, grid = strip  # grid [feature, pos]
            labels = [show_token(t)[:3] for t in result.tokens]
            self.query_one(Heatmap).set_data(grid, [f"f{f}" for f in features], labels, diverging=False)
