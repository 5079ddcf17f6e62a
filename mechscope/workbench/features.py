"""The features tab's state: the SAE folder in use, the clean prompt's top features, the selected
token and feature, its card, the names the user gave features, and the feature edits it makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from mechscope.engine.features.results import FeatureActivations, FeatureCardResult
from mechscope.engine.interventions import FeatureAblation, FeatureClamp, FeatureSteer, Intervention
from mechscope.requests.kinds import FeatureActivationsRequest, FeatureCardRequest, Outcome

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

TOP_FEATURES = 10  # per token, what the features tab lists
STRIP_FEATURES = 8  # rows of the token x feature strip
CARD_ROWS = 4  # contexts and promoted / suppressed tokens a card shows
CARDS_KEPT = 64  # cards kept in memory, so moving back to a feature shows it at once
MAX_LABEL = 80  # characters of a feature's name


def label_problem(text: str) -> str | None:
    """What is wrong with `text` as a feature's name (whitespace runs count as one space), if anything."""
    label = " ".join(text.split())
    return f"a name of at most {MAX_LABEL} characters, got {len(label)}" if len(label) > MAX_LABEL else None


def fired_at(result: FeatureActivations, position: int) -> list[tuple[int, float]]:
    """The features firing at token `position`, strongest first: (feature, activation)."""
    return [(int(f), float(v)) for f, v in zip(result.ids[position], result.values[position]) if f >= 0 and v > 0]


@dataclass(frozen=True)
class Picked:
    """A row picked from the attribution table: listed at its token of its prompt even when the
    feature is not among the strongest there, with the activation the table gave it."""

    prompt: str
    position: int
    feature: int
    activation: float


class FeatureTab:
    """Which SAE folder the features tab reads (None: none chosen), its latest outcome, the selection
    (a token and one of its listed features), cards by request and feature names by folder."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.folder: str | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.position: int | None = None  # the selected token (None: the last)
        self.feature: int | None = None  # the selected feature (None: the token's strongest)
        self.cards: dict[FeatureCardRequest, Outcome] = {}
        self.labels: dict[str, dict[int, str]] = {}  # SAE folder -> feature -> the user's name for it
        self.offered: str | None = None  # an SAE trained here on this model, used when none is chosen
        self.picked: Picked | None = None

    def offer(self, trained: tuple[str, ...]) -> None:
        """The engine's SAEs trained on this model (newest first): the tab opens on the newest."""
        self.offered = trained[0] if trained else None

    def use_offered(self) -> FeatureActivationsRequest | None:
        """No folder chosen: take the offered one (None when there is none)."""
        if self.folder is not None or self.offered is None:
            return None
        return self.use_folder(self.offered)

    def use_folder(self, text: str) -> FeatureActivationsRequest | None:
        """Read the SAE in the folder typed (on the engine's machine) from now on."""
        folder = text.strip()
        if not folder:
            self.error = "give the folder of an SAE (SAELens, sparsify or Gemma Scope layout)"
            return None
        if folder != self.folder:
            self.position = self.feature = self.picked = None
        self.folder, self.error = folder, None
        return self.request()

    def wanted(self) -> FeatureActivationsRequest | None:
        """The request the tab shows for the current inputs (None without a folder or a prompt)."""
        clean = self.bench.inputs.clean
        if self.folder is None or not clean.strip():
            return None
        return FeatureActivationsRequest(clean, self.folder, top_k=TOP_FEATURES)

    def request(self) -> FeatureActivationsRequest | None:
        """What to run now: the wanted request unless its outcome is already shown."""
        wanted = self.wanted()
        if wanted is None or (self.outcome is not None and self.outcome.request == wanted):
            return None
        return wanted

    def accept(self, outcome: Outcome) -> None:
        """Keep an outcome for the current inputs and record it; drop one the user typed past."""
        if outcome.request != self.wanted():
            return
        self.outcome = outcome
        if outcome.ok:
            self.error = None
            self.bench.recorder.work(outcome, "features")
        elif not outcome.cancelled:
            self.error = f"features not read: {outcome.error}"

    def restore(self, outcome: Outcome) -> None:
        self.folder = cast(FeatureActivationsRequest, outcome.request).sae_folder
        self.outcome = outcome

    @property
    def result(self) -> FeatureActivations | None:
        outcome = self.outcome
        return outcome.result if outcome is not None and outcome.ok else None

    # -- the selection ----------------------------------------------------------------------------

    def token(self) -> int | None:
        """The selected token's position (the last token unless moved), None with nothing read."""
        result = self.result
        if result is None or not result.tokens:
            return None
        last = len(result.tokens) - 1
        return last if self.position is None else min(max(self.position, 0), last)

    def listed(self) -> list[tuple[int, float]]:
        """The selected token's firing features, strongest first: (feature, activation)."""
        result, pos = self.result, self.token()
        if result is None or pos is None:
            return []
        fired = fired_at(result, pos)
        picked = self.picked
        if (picked is not None and self.outcome is not None and picked.position == pos
                and cast(FeatureActivationsRequest, self.outcome.request).prompt == picked.prompt
                and picked.feature not in [f for f, _ in fired]):
            fired = sorted([*fired, (picked.feature, picked.activation)], key=lambda item: -item[1])
        return fired

    def pick(self, picked: Picked) -> None:
        """Select a row of the attribution table: its feature at its token."""
        self.position, self.feature, self.picked = picked.position, picked.feature, picked

    def selected(self) -> int | None:
        """The selected feature: the one moved to while it is listed at this token, else the strongest."""
        listed = [f for f, _ in self.listed()]
        if not listed:
            return None
        return self.feature if self.feature in listed else listed[0]

    def move_feature(self, step: int) -> int | None:
        listed = [f for f, _ in self.listed()]
        current = self.selected()
        if current is None:
            return None
        self.feature = listed[min(max(listed.index(current) + step, 0), len(listed) - 1)]
        return self.feature

    def move_token(self, step: int) -> int | None:
        pos, result = self.token(), self.result
        if pos is None or result is None:
            return None
        self.position = min(max(pos + step, 0), len(result.tokens) - 1)
        return self.position

    def activation(self) -> float | None:
        """The selected feature's activation at the selected token."""
        selected = self.selected()
        return None if selected is None else dict(self.listed()).get(selected)

    # -- cards --------------------------------------------------------------------------------------

    def card_wanted(self) -> FeatureCardRequest | None:
        feature = self.selected()
        if self.folder is None or feature is None:
            return None
        result = self.result
        return FeatureCardRequest(self.folder, feature, None if result is None else result.site, CARD_ROWS)

    def card_request(self) -> FeatureCardRequest | None:
        """The card to read now (None when the selected feature's card is in hand or nothing is selected)."""
        wanted = self.card_wanted()
        return None if wanted is None or wanted in self.cards else wanted

    def accept_card(self, outcome: Outcome) -> None:
        """Keep a card (recorded when it is the selected feature's); a failed one says why in its place."""
        request = cast(FeatureCardRequest, outcome.request)
        if outcome.cancelled:
            return
        if len(self.cards) >= CARDS_KEPT:
            self.cards.pop(next(iter(self.cards)))
        self.cards[request] = outcome
        if outcome.ok and request == self.card_wanted():
            self.bench.recorder.work(outcome, "feature card")

    def restore_card(self, outcome: Outcome) -> None:
        self.cards[cast(FeatureCardRequest, outcome.request)] = outcome

    def card(self) -> Outcome | None:
        """The selected feature's card outcome, if read."""
        wanted = self.card_wanted()
        return None if wanted is None else self.cards.get(wanted)

    # -- names ---------------------------------------------------------------------------------------

    def label(self, feature: int) -> str:
        return "" if self.folder is None else self.labels.get(self.folder, {}).get(feature, "")

    def set_label(self, text: str) -> str | None:
        """Name the selected feature (empty: take its name away), recorded; the problem, if any."""
        feature, folder = self.selected(), self.folder
        if feature is None or folder is None:
            return "no feature selected"
        problem = label_problem(text)
        if problem is not None:
            return problem
        label = " ".join(text.split())
        names = dict(self.labels.get(folder, {}))
        if names.get(feature, "") == label:
            return None
        if label:
            names[feature] = label
        else:
            names.pop(feature, None)
        self.labels = {**self.labels, folder: names}
        self.bench.recorder.feature_label(folder, feature, label)
        return None

    def restore_labels(self, labels: dict[str, dict[int, str]]) -> None:
        self.labels = {folder: dict(names) for folder, names in labels.items()}

    # -- edits -------------------------------------------------------------------------------------

    def edit(self, kind: str, amount: float = 0.0) -> Intervention | None:
        """The selected feature edited at the selected token: `ablate`, `clamp` (to `amount`) or
        `steer` (adding `amount`); the SAE is named by its folder, so the edit replays anywhere."""
        feature, pos, result = self.selected(), self.token(), self.result
        if feature is None or pos is None or result is None or self.folder is None:
            return None
        if kind == "ablate":
            return FeatureAblation(result.site, self.folder, feature, positions=(pos,))
        if kind == "clamp":
            return FeatureClamp(result.site, self.folder, feature, amount, positions=(pos,))
        return FeatureSteer(result.site, self.folder, feature, amount, positions=(pos,))

    def strip(self, rows: int = STRIP_FEATURES) -> tuple[list[int], np.ndarray] | None:
        """The features strongest anywhere in the prompt after its first token (the attention sink,
        whose features fire in the hundreds and which SAEs are trained without), the selected one among
        them, and their activation at every token: (feature ids, [feature, pos]); a token where a
        feature is not among its top ones reads 0."""
        result = self.result
        if result is None:
            return None
        ids, values = np.asarray(result.ids), np.asarray(result.values)  # [pos, k] each
        after_sink = slice(1, None) if ids.shape[0] > 1 else slice(None)
        peak: dict[int, float] = {}
        for feature, value in zip(ids[after_sink].ravel().tolist(), values[after_sink].ravel().tolist()):
            if feature >= 0:
                peak[feature] = max(peak.get(feature, 0.0), value)
        chosen = sorted(peak, key=lambda f: (-peak[f], f))[:rows]
        selected = self.selected()
        if selected is not None and selected not in chosen and chosen:
            chosen[-1] = selected
        grid = np.zeros((len(chosen), ids.shape[0]), dtype=np.float64)  # [feature, pos]
        for row, feature in enumerate(chosen):
            pos, rank = np.nonzero(ids == feature)
            grid[row, pos] = values[pos, rank]
        return chosen, grid

    def card_result(self) -> FeatureCardResult | None:
        outcome = self.card()
        return outcome.result if outcome is not None and outcome.ok else None
