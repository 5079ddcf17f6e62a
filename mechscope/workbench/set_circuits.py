"""Circuit work over the workbench's prompt set: the function vector of an in-context set, the selected
head's attention between the set's roles, and the name-mover / S-inhibition grids (held by
`PromptSets.circuits`; the set tab and the attention view render them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.requests.kinds import (
    FunctionVectorRequest,
    Outcome,
    Request,
    RoleHeadsRequest,
    SetAttentionRequest,
)
from mechscope.workbench.set_texts import DEFAULT_TOP_HEADS, parse_function_vector_text

if TYPE_CHECKING:
    from mechscope.workbench.sets import PromptSets

FV_GRID = "function vector AIE"


class SetCircuits:
    """UI-free state of the circuit results over the current set, a part of `PromptSets`: requests go
    out through its `_issue` (a newer one supersedes an older one of its kind), outcomes are recorded
    through its `_record`."""

    def __init__(self, sets: PromptSets) -> None:
        self.sets = sets
        self.function_vector: Outcome | None = None  # the latest FunctionVectorRequest outcome
        self.roles: Outcome | None = None  # the latest SetAttentionRequest outcome
        self.role_heads: Any = None  # HeadScores: name mover, S-inhibition

    def reset(self) -> None:
        """Another set, session or model: its results go."""
        self.function_vector = self.roles = self.role_heads = None

    # -- grids ----------------------------------------------------------------------------------

    def grid_names(self) -> list[str]:
        names = [FV_GRID] if self.function_vector is not None else []
        return names + (list(self.role_heads.scores) if self.role_heads is not None else [])

    def grid_values(self, name: str) -> np.ndarray | None:
        if name == FV_GRID and self.function_vector is not None:
            return np.asarray(self.function_vector.result.aie, dtype=np.float64)
        if self.role_heads is not None and name in self.role_heads.scores:
            return np.asarray(self.role_heads.scores[name], dtype=np.float64)
        return None

    def marks(self) -> dict[tuple[int, int], str]:
        """The function vector's heads (`f` on the grid)."""
        if self.function_vector is None:
            return {}
        return dict.fromkeys(self.function_vector.result.heads, "f")

    # -- commands -------------------------------------------------------------------------------

    def function_vector_text(self, text: str, n_layers: int) -> FunctionVectorRequest | None:
        """What the dialog typed (`set_texts.parse_function_vector_text`): "LAYER [TOP_HEADS [COEFF]]"
        (e.g. "12", "12 10 3")."""
        try:
            parsed = parse_function_vector_text(text, n_layers)
        except ValueError as exc:
            self.sets.error = str(exc)
            return None
        return self.function_vector_request(parsed.layer, parsed.top_heads, parsed.coeff)

    def function_vector_request(self, layer: int, top_heads: int = DEFAULT_TOP_HEADS,
                                coeff: float = 1.0) -> FunctionVectorRequest | None:
        if (pset := self.sets._need_set()) is None:
            return None
        return self.sets._issue(FunctionVectorRequest(pset, layer, top_heads, coeff, f"fv-{pset.name}"))

    def attention_request(self, layer: int, head: int) -> SetAttentionRequest | None:
        """The selected head's role table over the set (None without a set, or when it is shown already)."""
        pset = self.sets.pset
        if pset is None:
            return None
        request = SetAttentionRequest(pset, layer, head)
        if self.roles is not None and self.roles.request == request:
            return None
        return self.sets._issue(request)

    def role_heads_request(self) -> RoleHeadsRequest | None:
        if (pset := self.sets._need_set()) is None:
            return None
        return self.sets._issue(RoleHeadsRequest(pset))

    # -- outcomes -------------------------------------------------------------------------------

    def acceptors(self) -> dict[type, Callable[[Outcome], Request | None]]:
        return {FunctionVectorRequest: self._accept_function_vector, SetAttentionRequest: self._accept_roles,
                RoleHeadsRequest: self._accept_role_heads}

    def _accept_function_vector(self, outcome: Outcome) -> None:
        """Kept, recorded with its provenance (the request: set, layer, heads in the summary), and the
        vector saved under its name, so a steering-vector intervention can name it."""
        self.function_vector = outcome
        self.sets._record(outcome)
        bench = self.sets.bench
        result = outcome.result
        bench.recorder.vector(result.name, np.asarray(result.vector, dtype=np.float32))
        bench.vectors.remember(result.name, result.vector)
        bench.invalidate()  # a vector of this name may already steer: its values changed

    def _accept_roles(self, outcome: Outcome) -> None:
        """Kept, not recorded: it follows the grid cursor, as the attention view's light runs do."""
        self.roles = outcome

    def _accept_role_heads(self, outcome: Outcome) -> None:
        self.role_heads = outcome.result
        self.sets._record(outcome)

    def restorers(self) -> dict[type, Callable[[Outcome], None]]:
        return {FunctionVectorRequest: self._restore_function_vector, RoleHeadsRequest: self._restore_role_heads}

    def _restore_function_vector(self, outcome: Outcome) -> None:
        if self.sets.pset is not None and outcome.request.pset == self.sets.pset:  # type: ignore[union-attr]
            self.function_vector = outcome

    def _restore_role_heads(self, outcome: Outcome) -> None:
        if self.sets.pset is not None and outcome.request.pset == self.sets.pset:  # type: ignore[union-attr]
            self.role_heads = outcome.result

    # -- text -----------------------------------------------------------------------------------

    def function_vector_lines(self) -> list[str]:
        """The function vector's provenance, top heads and zero-shot accuracy with and without it."""
        if self.function_vector is None:
            return []
        result = self.function_vector.result
        heads = " ".join(f"L{layer}.H{head} {result.aie[layer, head]:+.3f}" for layer, head in result.heads)
        rows = len(result.correct_with)
        return [f"function vector {result.name!r} from {result.set_name} ({rows} rows), added x{result.coeff:g} "
                f"at L{result.layer} to the zero-shot prompts (grid \"{FV_GRID}\")",
                f"  zero-shot accuracy without {result.accuracy_without:.0%} "
                f"(p {np.mean(result.prob_without):.3f}) → with {result.accuracy_with:.0%} "
                f"(p {np.mean(result.prob_with):.3f}); shuffled-label p {np.mean(result.base_prob):.3f}",
                f"  top heads by AIE: {heads}",
                f"  steer with it: + steering vector {result.name} at L{result.layer}"]

    def role_table(self, layer: int, head: int) -> str | None:
        """The head's role x role attention over the set (query role ↓, key role →, mean ± std), or
        None while it is not computed for this head and set."""
        outcome = self.roles
        if outcome is None or outcome.request != SetAttentionRequest(self.sets.pset, layer, head):  # type: ignore[arg-type]
            return None
        result = outcome.result
        width = max(len(r) for r in result.roles)
        head_line = " " * (width + 1) + " ".join(f"{r:>9}" for r in result.roles)
        lines = [f"{result.set_name}: L{layer}.H{head} from role ↓ to role → over {result.rows} rows",
                 head_line]
        for q, role in enumerate(result.roles):
            cells = " ".join(f"{result.mean[q, k]:.2f}±{result.std[q, k]:.2f}" for k in range(len(result.roles)))
            lines.append(f"{role:>{width}} {cells}")
        return "\n".join(lines)
