"""The features tab's state: the SAE folder in use and the top features of the clean prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np

from mechscope.engine.results import FeatureActivations
from mechscope.requests.kinds import FeatureActivationsRequest, Outcome

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

TOP_FEATURES = 10  # per token, what the features tab lists
STRIP_FEATURES = 8  # rows of the token x feature strip


class FeatureTab:
    """Which SAE folder the features tab reads (None: none chosen) and its latest outcome."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.folder: str | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None

    def use_folder(self, text: str) -> FeatureActivationsRequest | None:
        """Read the SAE in the folder typed (on the engine's machine) from now on."""
        folder = text.strip()
        if not folder:
            self.error = "give the folder of an SAE (SAELens, sparsify or Gemma Scope layout)"
            return None
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

    def strip(self, rows: int = STRIP_FEATURES) -> tuple[list[int], np.ndarray] | None:
        """The features strongest anywhere in the prompt and their activation at every token:
        (feature ids, [feature, pos]); a token where a feature is not among its top ones reads 0."""
        result = self.result
        if result is None:
            return None
        ids, values = np.asarray(result.ids), np.asarray(result.values)  # [pos, k] each
        peak: dict[int, float] = {}
        for feature, value in zip(ids.ravel().tolist(), values.ravel().tolist()):
            if feature >= 0:
                peak[feature] = max(peak.get(feature, 0.0), value)
        chosen = sorted(peak, key=lambda f: (-peak[f], f))[:rows]
        grid = np.zeros((len(chosen), ids.shape[0]), dtype=np.float64)  # [feature, pos]
        for row, feature in enumerate(chosen):
            pos, rank = np.nonzero(ids == feature)
            grid[row, pos] = values[pos, rank]
        return chosen, grid
