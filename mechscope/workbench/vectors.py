"""Steering vectors the workbench knows: building or adding one, and how large each steer is beside
the residual it is added to (held by `Workbench.vectors`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mechscope.engine.interventions import SteeringVector
from mechscope.requests.kinds import AddVectorRequest, BuildVectorRequest, Outcome

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench


class SteeringVectors:
    """The norm of each named vector, for the note beside a steering intervention."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.norms: dict[str, float] = {}

    def request(self, name: str, layer: int, positive: tuple[str, ...],
                negative: tuple[str, ...]) -> BuildVectorRequest:
        return BuildVectorRequest(name, layer, positive, negative)

    def accept(self, outcome: Outcome) -> None:
        """Record a built or added vector and its norm; a steer by that name runs again."""
        request = cast(BuildVectorRequest | AddVectorRequest, outcome.request)
        bench = self.bench
        if outcome.ok:
            bench.recorder.vector(request.name, np.asarray(outcome.result, dtype=np.float32))
            self.remember(request.name, outcome.result)
            bench.invalidate()  # a vector of this name may already steer: its values changed
        else:
            bench.error = None if outcome.cancelled else f"no steering vector: {outcome.error}"

    def remember(self, name: str, values: Any) -> None:
        self.norms[name] = float(np.linalg.norm(np.asarray(values, dtype=np.float64)))

    def norm(self, steer: SteeringVector) -> tuple[float, float | None] | None:
        """(|coeff · v|, median residual norm entering the vector's layer over the positions after the
        first) or None for an unknown vector. Position 0 is left out: its massive activation (a norm
        some hundred times the others') would make any vector look small.

        The residual entering layer L is the one after layer L-1 (the embeddings for L = 0: not in
        the stats, so None)."""
        norm = self.norms.get(steer.vector_id)
        if norm is None:
            return None
        resid = None
        result = self.bench.result
        if result is not None and result.stats is not None and 0 < steer.layer <= result.stats.resid_norm.shape[0]:
            norms = np.asarray(result.stats.resid_norm[steer.layer - 1], dtype=np.float64)  # [pos]
            resid = float(np.median(norms[1:] if norms.size > 1 else norms))
        return abs(steer.coeff) * norm, resid

    def note(self, steer: SteeringVector) -> str:
        """` (|Δ| 3.1 vs median resid 12 after pos 0)`, warning when the steer outweighs the residual."""
        norms = self.norm(steer)
        if norms is None:
            return ""
        added, resid = norms
        if resid is None:
            return f" (|Δ| {added:.3g})"
        warning = ": LARGER than the residual" if added > resid else ""
        return f" (|Δ| {added:.3g} vs median resid {resid:.3g} after pos 0{warning})"
