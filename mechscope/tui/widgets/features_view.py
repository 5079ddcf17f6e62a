"""The features tab: the selected token's strongest SAE features (one selected, with its card beside
them) and a token x feature strip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from mechscope.engine.features.results import FeatureActivations, FeatureCardResult
from mechscope.engine.interventions import sae_label
from mechscope.tui.commands import key_of, palette_title
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.plain import Plain
from mechscope.tui.widgets.prompt_pane import show_token
from mechscope.workbench.features import fired_at

if TYPE_CHECKING:
    from mechscope.workbench.features import FeatureTab

CONTEXT_BEFORE = 8  # tokens of a context shown before the firing token
CONTEXT_AFTER = 3


def keys_hint() -> str:
    """The tab's keys, named by the key table."""
    move, token = (" ".join(key_of(f"{name}({step})") for step in (-1, 1)) for name in ("feature_move", "feature_token"))
    ablate, clamp, steer = (key_of(f"feature_edit('{kind}')") for kind in ("ablate", "clamp", "steer"))
    return (f"keys: {move} feature · {token} token · {key_of('feature_label')} name\n"
            f"edit at the token: {ablate} ablate · {clamp} clamp · {steer} steer")


def features_text(result: FeatureActivations, folder: str, position: int | None = None,
                  selected: int | None = None, labels: dict[int, str] | None = None, shown: int = 6,
                  fired: list[tuple[int, float]] | None = None) -> Text:
    """Which SAE, then the selected token's (default: the last) strongest features, the selected one
    marked and each with its name, and the keys; then what the SAE leaves unexplained there and its
    held-out quality: the list comes first, so a short pane still shows it."""
    last = len(result.tokens) - 1
    pos = last if position is None else position
    error = float(result.error_norm[pos])
    norm = float(result.site_norm[pos])
    labels = labels or {}
    text = Text()
    text.append(f"SAE {sae_label(folder)} · {result.site} · {result.d_sae} features\n", style="bold")
    where = "last token" if pos == last else f"token {pos} of {last + 1}"
    fired = fired_at(result, pos) if fired is None else fired
    ids = [f for f, _ in fired]
    if not fired:
        text.append(f"no feature fires at token {pos}\n")
    else:
        text.append(f"  feature     activation at token {pos} {show_token(result.tokens[pos])!r}\n", style="dim")
        start = 0  # the selected one second (one stronger above it), so a short pane still shows it
        if selected in ids:
            start = max(0, min(ids.index(selected) - 1, len(fired) - shown))
        for feature, value in fired[start:start + shown]:
            mark = "▸ " if feature == selected else "  "
            line = Text(f"{mark}feature {feature:<7} {value:8.3f}", style="reverse" if feature == selected else "")
            if feature in labels:
                line.append(f"  {labels[feature]}", style="italic")
            text.append_text(line)
            text.append("\n")
        if len(fired) > shown:
            text.append(f"  ({len(fired)} fire here; {key_of('feature_move(1)')} moves on)\n", style="dim")
        text.append(keys_hint() + "\n", style="dim")
    text.append(f"clean prompt, no interventions · {where}: L0 {int(result.l0[pos])}, error |x - x̂| "
                f"{error:.3f} of |x| {norm:.3f}" + (f" ({error / norm:.0%})" if norm > 0 else "") + "\n",
                style="dim")
    quality = result.quality
    text.append(f"held-out quality: {quality.summary()}\n" if quality is not None
                else f"held-out quality not measured: `mechscope features eval {folder}`\n", style="dim")
    text.append(f"{folder} · digest {result.sae_digest[:12]}", style="dim")
    return text


def context_text(tokens: list[str], at: int) -> Text:
    """One top context: a few tokens either side, the firing token bracketed and bold."""
    def clean(token: str) -> str:
        shown = token.replace("\n", "⏎").replace("\t", " ")
        return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in shown)

    start = max(0, at - CONTEXT_BEFORE)
    line = Text("…" if start else "")
    line.append("".join(clean(t) for t in tokens[start:at]))
    line.append(f"[{clean(tokens[at])}]" if 0 <= at < len(tokens) else "", style="bold reverse")
    line.append("".join(clean(t) for t in tokens[at + 1:at + 1 + CONTEXT_AFTER]))
    return line


def card_text(card: FeatureCardResult, folder: str, label: str) -> Text:
    """A feature's card: its name, density and top contexts from the index, its decoder direction's
    logit lens."""
    text = Text()
    text.append(f"feature {card.feature}" + (f" {label!r}" if label else "")
                + f" · {card.site}\n", style="bold")
    if not card.indexed:
        text.append(f"no index: run `mechscope features index {folder}`\n", style="dim")
    else:
        density = card.density if card.density is not None else 0.0
        text.append(f"density: fires on {100 * density:.3g}% of {card.index_tokens:,} indexed tokens\n")
        if card.context_tokens:
            text.append("top contexts (activation, [token it fires on]):\n", style="dim")
        for value, tokens, at in zip(card.context_values.tolist(), card.context_tokens, card.context_at):
            text.append(f" {value:7.3f}  ")
            text.append_text(context_text(tokens, at))
            text.append("\n")
    text.append("decoder row → final norm → unembedding (logit):\n", style="dim")
    for word, tokens, logits in (("promotes  ", card.promoted, card.promoted_logits),
                                 ("suppresses", card.suppressed, card.suppressed_logits)):
        text.append(f" {word} " + "  ".join(f"{show_token(t)} {float(v):+.2f}"
                                           for t, v in zip(tokens, logits.tolist())) + "\n")
    return text


class FeaturesView(Vertical):
    """The selected token's features with the selected feature's card beside them, the strip (rows:
    features strongest anywhere in the prompt; columns: tokens) below."""

    DEFAULT_CLASSES = "-message"  # until features are read: the text says what to do

    DEFAULT_CSS = """
    FeaturesView #features-top { height: auto; max-height: 60%; }
    FeaturesView #features-summary { width: 1fr; height: auto; max-height: 14; }
    FeaturesView #features-card { width: 1fr; height: auto; max-height: 14; padding-left: 1; }
    FeaturesView Heatmap { height: 1fr; }
    FeaturesView.-message #features-top { max-height: 100%; }
    FeaturesView.-message #features-card, FeaturesView.-message Heatmap { display: none; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="features-top"):
            yield Plain(self.empty_text(), id="features-summary")
            yield Plain("", id="features-card")
        yield Heatmap(cell_width=3, diverging=False, id="features-strip")

    @staticmethod
    def empty_text() -> str:
        return (f"no SAE chosen: the palette's '{palette_title('sae_folder')}' reads one from a folder "
                "(SAELens, sparsify or Gemma Scope layout); `mechscope features train` makes one")

    def show_message(self, text: str) -> None:
        """`text` across the whole tab: with no features read there is no card beside it, no strip below."""
        self.set_class(True, "-message")
        self.query_one("#features-summary", Static).update(text)
        self.query_one("#features-card", Static).update("")

    def show(self, features: FeatureTab) -> None:
        result = features.result
        if result is None:
            return
        self.set_class(False, "-message")
        folder = features.folder or ""
        labels = features.labels.get(folder, {})
        pos, selected = features.token(), features.selected()
        self.query_one("#features-summary", Static).update(
            features_text(result, folder, pos, selected, labels, fired=features.listed()))
        strip = features.strip()
        if strip is not None and strip[0]:
            rows, grid = strip  # grid [feature, pos]
            heatmap = self.query_one(Heatmap)
            heatmap.set_data(grid, [f"f{f}" for f in rows], [show_token(t)[:3] for t in result.tokens],
                             diverging=False)
            if selected is not None and selected in rows and pos is not None:
                heatmap.cursor = (rows.index(selected), pos)

    def show_card(self, features: FeatureTab) -> None:
        """The selected feature's card, or what stands in its place (reading, failed, nothing selected)."""
        widget = self.query_one("#features-card", Static)
        feature, folder = features.selected(), features.folder or ""
        if feature is None:
            widget.update("")
            return
        outcome = features.card()
        if outcome is None:
            widget.update(Text(f"reading feature {feature}'s card…", style="dim"))
        elif not outcome.ok:
            widget.update(Text(f"card not read: {outcome.error}" if outcome.error else "card not read"))
        else:
            widget.update(card_text(outcome.result, folder, features.label(feature)))
