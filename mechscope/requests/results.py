"""Results a request handler builds from several engine calls over a prompt set (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class VerifiedEstimate:
    """An attribution estimate's mean per head ([layer, head]) and, for the heads it verified, the
    exact patching effect that replaces the estimated value (`exact[(layer, head)]`)."""

    method: str
    estimated: np.ndarray  # [layer, head]
    exact: dict[tuple[int, int], float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def values(self) -> np.ndarray:
        """The estimate with every verified head's value replaced by its exact one."""
        out = self.estimated.copy()
        for (layer, head), value in self.exact.items():
            out[layer, head] = value
        return out
