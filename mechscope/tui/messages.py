"""Messages workers post: model loading for the App, one `Finished(outcome)` per request for the workbench."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from mechscope.engine.results import GeneratedToken, SweepResult
from mechscope.workbench.requests import GenerateRequest, Outcome, SweepRequest


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
class Finished(Message):
    """A request ran (or failed, or was cancelled): the outcome carries the request it ran."""

    outcome: Outcome


@dataclass
class SweepPartial(Message):
    """A partial sweep result streamed while `request` runs."""

    request: SweepRequest
    result: SweepResult


@dataclass
class GenerationToken(Message):
    """A token streamed while `request` (one lane of a generation) runs."""

    request: GenerateRequest
    token: GeneratedToken
