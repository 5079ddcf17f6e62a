"""Messages workers post: model loading for the App; `Partial` while a request runs and `Finished` once
per request for the workbench."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from mechscope.requests.kinds import Outcome, Request


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
class Partial(Message):
    """Something `request` streamed while it runs: a partial sweep, a set sweep's rows, a generated token."""

    request: Request
    value: Any
