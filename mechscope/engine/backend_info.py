"""Which backend an engine runs on, in words for the header and as data for a session's manifest."""

from __future__ import annotations

from typing import Any

NATIVE = {"backend": "native"}


def backend_status(engine: object) -> str | None:
    """The header's note on the backend ("nnsight (local): full recompute on every change"); None
    for the native engine, which needs none."""
    backend = getattr(engine, "backend", None)
    return None if backend is None else str(backend.status)


def backend_record(engine: object) -> dict[str, Any]:
    """What a session records about the backend: `backend.to_dict()`, or {"backend": "native"}."""
    backend = getattr(engine, "backend", None)
    return dict(NATIVE) if backend is None else dict(backend.to_dict())


def backend_name(record: object) -> str:
    """The backend a manifest's record names ("native" when the session predates the record)."""
    return str(record.get("backend", "native")) if isinstance(record, dict) else "native"
