"""The Workbench's plain state: the typed inputs, generation settings, a sweep, a generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mechscope.engine.metric import Metric
from mechscope.engine.results import GeneratedToken, SweepResult
from mechscope.requests.kinds import GenerateRequest, PathSweepRequest, SweepRequest

Lane = Literal["baseline", "intervened"]


@dataclass(frozen=True)
class Inputs:
    """What the user typed, as plain strings (the prompt pane shows these)."""

    clean: str
    corrupted: str
    target: str
    foil: str
    metric_kind: str = "logit_diff"

    def metric(self) -> tuple[Metric | None, str | None]:
        """The metric the inputs describe, or None with the reason to show under the prompt."""
        if not self.target and self.metric_kind != "kl":
            return None, "no metric: type a target token (e.g. ' Mary')"
        try:
            if self.metric_kind == "logit_diff":
                return Metric("logit_diff", self.target, self.foil), None
            return Metric(self.metric_kind, self.target), None  # type: ignore[arg-type]
        except ValueError as exc:
            return None, f"metric not used: {exc}"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 24
    temperature: float = 0.0
    seed: int = 0


@dataclass
class SweepState:
    """One sweep kind: the request it ran, its latest (partial or final) result, how it ended."""

    request: SweepRequest | PathSweepRequest  # a path sweep fills the head sweep's grid
    result: SweepResult | None = None
    done: bool = False
    cancelled: bool = False
    error: str | None = None


@dataclass
class Generation:
    """The latest generation: the request of each lane and the tokens streamed so far."""

    request: GenerateRequest
    baseline: GenerateRequest
    tokens: dict[str, list[GeneratedToken]] = field(
        default_factory=lambda: {"baseline": [], "intervened": []})
    done: bool = False
    cancelled: bool = False
