"""Sessions: crash-safe recording of an exploration, resume, replay and export. No UI imports.

Names are loaded on first use so that `mechscope.sessions.cli` (imported on every CLI start) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechscope.sessions.errors import SessionError
    from mechscope.sessions.events import Event
    from mechscope.sessions.export import export_script
    from mechscope.sessions.replaying import StepResult, Tolerance, replay, tolerance_for
    from mechscope.sessions.store import Session, SessionState, SessionSummary

_EXPORTS = {
    "SessionError": "mechscope.sessions.errors",
    "Event": "mechscope.sessions.events",
    "Session": "mechscope.sessions.store",
    "SessionState": "mechscope.sessions.store",
    "SessionSummary": "mechscope.sessions.store",
    "StepResult": "mechscope.sessions.replaying",
    "Tolerance": "mechscope.sessions.replaying",
    "replay": "mechscope.sessions.replaying",
    "tolerance_for": "mechscope.sessions.replaying",
    "export_script": "mechscope.sessions.export",
}

__all__ = [
    "Event", "Session", "SessionError", "SessionState", "SessionSummary", "StepResult", "Tolerance",
    "export_script", "replay", "tolerance_for",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mechscope.sessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
