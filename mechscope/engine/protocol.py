"""The engine interface the workbench, sessions and CLI program against: in-process, served or remote."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptSet
from mechscope.engine.results import (
    SWEEP_KINDS,
    GeneratedToken,
    ModelInfo,
    RunResult,
    SweepKind,
    SweepResult,
)
from mechscope.engine.views import Views

ShouldStop = Callable[[], bool]  # asked between layers; True cancels the work (Cancelled)

__all__ = ["SWEEP_KINDS", "EngineProtocol", "SetEngineProtocol", "ShouldStop", "SweepKind"]


@runtime_checkable
class EngineProtocol(Protocol):
    """What every engine provides. Results are plain data (numpy, dataclasses), never tensors.

    Implementations: `mechscope.engine.Engine` (in-process), the client of `mechscope serve`, and
    other backends. Errors are `mechscope.engine.errors.MechscopeError` subclasses with a one-line
    message a user can act on. `capabilities` names what the engine offers
    (`mechscope.engine.capabilities.Capability`); a request needing another is refused before it runs.
    """

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def info(self) -> ModelInfo: ...

    @property
    def source(self) -> str: ...

    @property
    def weights_digest(self) -> str: ...

    @property
    def vectors(self) -> Mapping[str, np.ndarray]: ...

    @property
    def reference_prompts(self) -> Sequence[str]: ...

    def tokenize(self, text: str) -> tuple[list[int], list[str]]: ...

    def decode_token(self, token_id: int) -> str: ...

    def run(self, prompt: str, interventions: Iterable[Intervention] = (), views: Views | None = None,
            metric: Metric | None = None, corrupted: str | None = None, top_k: int = 10,
            should_stop: ShouldStop | None = None) -> RunResult: ...

    def sweep(self, kind: str, clean: str, corrupt: str, metric: Metric, direction: str = "noising",
              on_progress: Callable[[SweepResult], None] | None = None,
              should_stop: ShouldStop | None = None,
              interventions: Iterable[Intervention] = ()) -> SweepResult: ...

    def generate(self, prompt: str, interventions: Iterable[Intervention] = (), max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0, corrupted: str | None = None,
                 on_token: Callable[[GeneratedToken], None] | None = None,
                 should_stop: ShouldStop | None = None) -> list[GeneratedToken]: ...

    def validate(self, interventions: Iterable[Intervention], prompt: str,
                 corrupted: str | None = None) -> None: ...

    def add_vector(self, name: str, array: np.ndarray) -> None: ...

    def remove_vector(self, name: str) -> None: ...

    def build_steering_vector(self, name: str, layer: int, positive: Sequence[str],
                              negative: Sequence[str]) -> np.ndarray: ...

    def set_reference_prompts(self, prompts: Sequence[str]) -> None: ...


@runtime_checkable
class SetEngineProtocol(EngineProtocol, Protocol):
    """Optional methods over prompt sets (the in-process `Engine` has them; the serve client and the
    nnsight backend need not, and the workbench says "not available on this engine" without them).

    Results are the engine's plain dataclasses: `SetRunResult`, `SetSweepResult` (set_runs),
    `Estimate` (estimators), `HeadScores` (detectors), a list of `MassiveLayer` (massive)."""

    def run_set(self, pset: PromptSet, kind: str = "logit_diff", interventions: Iterable[Intervention] = (),
                prompt: str = "clean", padding: str = "left", means: str = "clean") -> Any: ...

    def sweep_set(self, pset: PromptSet, **options: Any) -> Any: ...

    def estimate(self, pset: PromptSet, method: str, steps: int = 5, **options: Any) -> Any: ...

    def detect_heads(self) -> Any: ...

    def massive_activations(self, prompts: Any, ratio: float = 100.0) -> Any: ...
