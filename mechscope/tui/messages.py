"""App-wide messages: engine workers post these with plain-data results; the app's handlers own state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from textual.message import Message

from mechscope.engine.results import GeneratedToken, RunResult, SweepResult


@dataclass
class EngineProgress(Message):
    """Model loading progress (fraction None when unknown)."""

    text: str
    fraction: float | None


@dataclass
class EngineLoaded(Message):
    engine: Any


@dataclass
class EngineFailed(Message):
    """The model could not be loaded; `reason` is one line for the user."""

    reason: str


@dataclass
class RunFinished(Message):
    """A live run finished; `request` is the counter value it was started with (stale ones are dropped)."""

    request: int
    result: RunResult


@dataclass
class EngineError(Message):
    """An engine call failed with a user-facing message."""

    action: str
    text: str


@dataclass
class AttentionReady(Message):
    address: str
    pattern: np.ndarray  # [query, key]
    tokens: list[str]


@dataclass
class SweepUpdate(Message):
    """A partial or final sweep result (final when `result.complete` or `done`) and the
    (clean, corrupted, metric) it was computed for."""

    result: SweepResult
    inputs: tuple[str, str, Any]
    done: bool = False


@dataclass
class GenerationToken(Message):
    lane: str  # "baseline" | "intervened"
    token: GeneratedToken


@dataclass
class GenerationDone(Message):
    cancelled: bool = False


@dataclass
class InterventionChecked(Message):
    """A new or edited intervention passed the engine's dry run; `replace_id` None means add it."""

    intervention: Any
    replace_id: int | None = None
    toggle: bool = False  # add through InterventionStack.toggle_head (grid-style on/off)


@dataclass
class VectorReady(Message):
    """A steering vector was built or loaded into the engine; `steer` uses it (None: it did not fit)."""

    name: str
    vector: np.ndarray  # [d_model]
    steer: Any
    error: str | None = None
